// expect: 200 answered
export default {
  fetch(req, env, ctx) {
    ctx.waitUntil((async () => { await new Promise((r) => setTimeout(r, 1)); for (;;) {} })());
    return new Response('answered');
  },
};
