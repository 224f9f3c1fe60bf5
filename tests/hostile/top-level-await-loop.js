// expect: 503 startup_limit_exceeded
await (async () => { for (;;) await null; })();
export default { fetch() { return new Response('never'); } };
