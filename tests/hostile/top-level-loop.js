// expect: 503 startup_limit_exceeded
for (;;) {}
export default { fetch() { return new Response('never'); } };
