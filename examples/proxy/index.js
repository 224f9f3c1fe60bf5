// Forwards every request to env.UPSTREAM with `fetch`, streaming both bodies, and marks the
// response. Hop-by-hop headers are not forwarded.
const HOP_BY_HOP = ["connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade", "te", "trailer"];

export default {
  async fetch(request, env) {
    const incoming = new URL(request.url);
    const target = new URL(incoming.pathname + incoming.search, env.UPSTREAM);
    const headers = new Headers(request.headers);
    HOP_BY_HOP.forEach((h) => headers.delete(h));
    headers.delete("host");
    headers.set("x-forwarded-host", incoming.host);
    let upstream;
    try {
      upstream = await fetch(target, {
        method: request.method,
        headers,
        body: request.body,
        redirect: "manual",
      });
    } catch (e) {
      return new Response(`upstream ${target.origin} unreachable: ${e.message}\n`, { status: 502 });
    }
    const response = new Response(upstream.body, upstream);
    response.headers.set("x-proxied-by", "tern");
    return response;
  },
};
