// expect: 500 uncaught_exception
function f(n) { return f(n + 1) + 1; }
export default { fetch() { return new Response(String(f(0))); } };
