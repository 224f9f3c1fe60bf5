// expect: cut
export default { fetch() { return new Response(new ReadableStream({ pull(c) { c.enqueue(new Uint8Array(1)); for (;;) {} } })); } };
