// expect: 500 uncaught_exception
export default { fetch() { return new Response(String((function () {}).constructor('return 1')())); } };
