// expect: 503 memory_limit_exceeded
// limit: startup_cpu_ms = 10000
// limit: memory_mib = 32
const keep = []; for (;;) keep.push(new Array(100000).fill(1.5));
export default { fetch() { return new Response('never'); } };
