// expect: cut
// limit: wall_ms = 3000
// The wall clock starts when the node dispatches the request, so it also covers the wait for
// the isolate thread. With 300 ms the head itself raced it: in isolate hosts under CI load a
// startup bomb on the same thread holds it for its 400 ms startup budget, and the request got
// 503 wall_time_exceeded instead of a cut (test named after it: this case, in hosts).
export default { fetch() { return new Response(new ReadableStream({ start(c) { c.enqueue(new TextEncoder().encode('first')); } })); } };
