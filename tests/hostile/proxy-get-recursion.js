// expect: 500 uncaught_exception
const p = new Proxy({}, { get: (t, k) => p[k] });
export default { fetch() { return new Response(String(p.x)); } };
