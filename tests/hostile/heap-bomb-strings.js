// expect: 503 memory_limit_exceeded
// limit: cpu_ms = 20000
// limit: memory_mib = 32
export default { fetch() { const keep = []; for (let i = 0; ; i++) keep.push('x'.repeat(1 << 16) + i); } };
