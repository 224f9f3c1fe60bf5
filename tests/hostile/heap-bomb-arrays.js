// expect: 503 memory_limit_exceeded
// limit: cpu_ms = 20000
// limit: memory_mib = 32
export default { fetch() { const keep = []; for (;;) keep.push(new Array(100000).fill(1.5)); } };
