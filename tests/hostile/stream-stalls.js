// expect: cut
// limit: wall_ms = 300
export default { fetch() { return new Response(new ReadableStream({ start(c) { c.enqueue(new TextEncoder().encode('first')); } })); } };
