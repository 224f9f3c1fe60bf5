// expect: 200 no code from strings
export default {
  async fetch() {
    globalThis.ran = false;
    try { setTimeout('globalThis.ran = true', 0); } catch {}
    await new Promise((r) => setTimeout(r, 20));
    return new Response(globalThis.ran ? 'string timer ran' : 'no code from strings');
  },
};
