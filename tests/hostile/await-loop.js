// expect: 503 cpu_limit_exceeded
export default { async fetch() { for (;;) await null; } };
