// expect: 503 cpu_limit_exceeded
export default { fetch() { let v = { a: [1, 2, 3] }; for (;;) v = JSON.parse(JSON.stringify(v)); } };
