;; Never ends: stopped by the CPU limit, like its JavaScript twin.
(module
  (memory (export "memory") 1)
  (func (export "_start") (loop $spin (br $spin))))
