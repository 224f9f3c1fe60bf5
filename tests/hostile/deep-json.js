// expect: 500 uncaught_exception
export default { fetch() { return new Response(String(JSON.parse('['.repeat(1e6)))); } };
