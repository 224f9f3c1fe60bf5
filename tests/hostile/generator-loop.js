// expect: 503 cpu_limit_exceeded
function* g() { for (;;) yield 1; }
export default { fetch() { for (const _ of g()) {} } };
