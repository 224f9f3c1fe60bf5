// expect: 503 memory_limit_exceeded
// limit: cpu_ms = 20000
// A WebAssembly.Memory created from JS asks for a 4 GiB maximum. Its maximum is clamped to
// the function's 128 MiB, and on this engine its buffer lives in the JS heap, so growing
// stops at the heap limit, and the isolate is killed for memory.
export default { fetch() {
  const memory = new WebAssembly.Memory({ initial: 1, maximum: 65536 });
  for (;;) memory.grow(64);
} };
