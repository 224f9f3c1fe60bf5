;; Increments a counter in its memory and one in a global it does not export, and
;; answers with their sum: "2" on every request, because every request starts from the
;; program's initial state.
(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (global $runs (mut i32) (i32.const 0))
  (data (i32.const 16) "Content-Type: text/plain\n\n0")
  (func (export "_start")
    (i32.store (i32.const 1000) (i32.add (i32.load (i32.const 1000)) (i32.const 1)))
    (global.set $runs (i32.add (global.get $runs) (i32.const 1)))
    (i32.store8 (i32.const 42) (i32.add (i32.const 48) (i32.add (global.get $runs) (i32.load (i32.const 1000)))))
    (i32.store (i32.const 0) (i32.const 16))
    (i32.store (i32.const 4) (i32.const 27))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))
