// A small JSON API routed with URLPattern: list, read, create and delete items.
// State lives in the isolate's memory, so it is per node and lost on restart: an example,
// not a database.
const items = new Map([["1", { id: "1", name: "first item" }]]);
let nextId = 2;

const routes = [
  ["GET", new URLPattern({ pathname: "/items" }), () => Response.json([...items.values()])],
  ["GET", new URLPattern({ pathname: "/items/:id" }), (_req, { id }) =>
    items.has(id) ? Response.json(items.get(id)) : notFound(`no item ${id}`)],
  ["POST", new URLPattern({ pathname: "/items" }), async (req) => {
    let body;
    try {
      body = await req.json();
    } catch {
      return Response.json({ error: "body must be JSON" }, { status: 400 });
    }
    if (typeof body?.name !== "string" || body.name.length === 0) {
      return Response.json({ error: "name must be a non-empty string" }, { status: 422 });
    }
    const item = { id: String(nextId++), name: body.name };
    items.set(item.id, item);
    return Response.json(item, { status: 201, headers: { location: `/items/${item.id}` } });
  }],
  ["DELETE", new URLPattern({ pathname: "/items/:id" }), (_req, { id }) =>
    items.delete(id) ? new Response(null, { status: 204 }) : notFound(`no item ${id}`)],
];

function notFound(message) {
  return Response.json({ error: message }, { status: 404 });
}

export default {
  async fetch(request) {
    for (const [method, pattern, handler] of routes) {
      const match = pattern.exec(request.url);
      if (match && request.method === method) return handler(request, match.pathname.groups);
    }
    return notFound(`no route for ${request.method} ${new URL(request.url).pathname}`);
  },
};
