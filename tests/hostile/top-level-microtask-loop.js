// expect: 503 startup_limit_exceeded
const spin = () => { Promise.resolve().then(spin); }; spin();
await new Promise(() => setTimeout(() => {}, 10));
export default { fetch() { return new Response('never'); } };
