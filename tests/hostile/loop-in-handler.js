// expect: 503 cpu_limit_exceeded
export default { fetch() { for (;;) {} } };
