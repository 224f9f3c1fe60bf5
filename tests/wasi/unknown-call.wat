;; Calls path_open, which Tern does not support: it answers ENOSYS (52) and the program
;; carries on, saying which errno it got.
(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "path_open"
    (func $path_open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "Content-Type: text/plain\n\nENOSYS")
  (data (i32.const 64) "Content-Type: text/plain\n\nother!")
  (func (export "_start")
    (local $errno i32)
    (local.set $errno (call $path_open (i32.const 3) (i32.const 0) (i32.const 100) (i32.const 4)
      (i32.const 0) (i64.const 0) (i64.const 0) (i32.const 0) (i32.const 200)))
    (i32.store (i32.const 0) (select (i32.const 16) (i32.const 64) (i32.eq (local.get $errno) (i32.const 52))))
    (i32.store (i32.const 4) (i32.const 32))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))
