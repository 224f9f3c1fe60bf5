// expect: 503 cpu_limit_exceeded
export default { fetch() { const b = new Uint8Array(16); for (;;) crypto.getRandomValues(b); } };
