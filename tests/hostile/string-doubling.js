// expect: 500 uncaught_exception
// limit: cpu_ms = 20000
export default { fetch() { let s = 'x'; for (;;) s = s + s; } };
