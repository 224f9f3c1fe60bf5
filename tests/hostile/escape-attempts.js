// expect: 200 none
export default {
  async fetch() {
    const found = [];
    for (const name of ['Deno', '__bootstrap', 'process', 'require', 'Bun', 'core']) if (name in globalThis) found.push(name);
    for (const spec of ['node:fs', 'data:text/javascript,export default 1', 'file:///etc/passwd', 'https://example.com/x.js']) {
      try { await import(spec); found.push(spec); } catch {}
    }
    return new Response(found.length ? found.join(',') : 'none');
  },
};
