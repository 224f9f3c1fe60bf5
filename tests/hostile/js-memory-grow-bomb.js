// expect: 500 uncaught_exception
// limit: cpu_ms = 20000
// A WebAssembly.Memory created from JS asks for a 4 GiB maximum. Its maximum is clamped to
// the function's 128 MiB, and on this engine its buffer lives in the JS heap, so growing
// stops at the heap limit; the engine reports that failed allocation as a TypeError ("not
// an object") rather than as running out of memory, so the request ends as an uncaught
// exception. What matters: the memory stays bounded and the node is unharmed.
export default { fetch() {
  const memory = new WebAssembly.Memory({ initial: 1, maximum: 65536 });
  for (;;) memory.grow(64);
} };
