// expect: 500 uncaught_exception
export default { fetch() { return new Response(String(eval('1 + 1'))); } };
