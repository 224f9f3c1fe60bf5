// expect: 503 memory_limit_exceeded
// limit: cpu_ms = 20000
export default { fetch() { return new Response(String(new ArrayBuffer(2 ** 31).byteLength)); } };
