// expect: 503 cpu_limit_exceeded
export default { fetch() { try { for (;;) {} } catch (e) { return new Response('escaped: ' + e); } } };
