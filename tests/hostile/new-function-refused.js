// expect: 500 uncaught_exception
export default { fetch() { return new Response(String(new Function('return 1')())); } };
