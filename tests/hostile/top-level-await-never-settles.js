// expect: 500 load_failed
await new Promise(() => {});
export default { fetch() { return new Response('never'); } };
