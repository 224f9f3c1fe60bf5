// expect: 500 uncaught_exception
export default { async fetch() { const AF = (async () => {}).constructor; return new Response(String(await AF('return 1')())); } };
