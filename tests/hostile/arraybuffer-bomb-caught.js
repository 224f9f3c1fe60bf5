// expect: 503 memory_limit_exceeded
// limit: cpu_ms = 20000
export default { fetch() { const keep = []; for (;;) { try { keep.push(new ArrayBuffer(16 << 20)); } catch {} } } };
