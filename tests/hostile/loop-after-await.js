// expect: 503 cpu_limit_exceeded
export default { async fetch() { await new Promise((r) => setTimeout(r, 5)); for (;;) {} } };
