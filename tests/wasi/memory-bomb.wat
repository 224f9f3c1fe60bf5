;; Grows its memory 16 pages at a time until growing fails, then gives up (a trap): it died
;; at the function's memory limit.
(module
  (memory (export "memory") 1)
  (func (export "_start")
    (loop $grow
      (br_if $grow (i32.ne (memory.grow (i32.const 16)) (i32.const -1))))
    unreachable))
