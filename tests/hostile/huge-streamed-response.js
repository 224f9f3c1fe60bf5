// expect: cut
// limit: response_body_mib = 1
export default {
  fetch() {
    const chunk = new Uint8Array(64 * 1024);
    let sent = 0;
    return new Response(new ReadableStream({ pull(c) { c.enqueue(chunk); sent += chunk.length; if (sent > (8 << 20)) c.close(); } }));
  },
};
