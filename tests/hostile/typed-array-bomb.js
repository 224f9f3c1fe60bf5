// expect: 503 memory_limit_exceeded
// limit: cpu_ms = 20000
export default { fetch() { const keep = []; for (;;) keep.push(new Uint8Array(16 << 20)); } };
