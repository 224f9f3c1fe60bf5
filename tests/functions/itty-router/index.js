// An itty-router app written for Cloudflare Workers, unchanged.
import { AutoRouter, error } from "itty-router";

const router = AutoRouter();
router
  .get("/", () => "Hello itty!")
  .get("/items/:id", ({ id, query }) => ({ id, sort: query.sort ?? null }))
  .post("/items", async (request) => {
    const body = await request.json();
    return new Response(JSON.stringify({ created: body.name }), { status: 201, headers: { "content-type": "application/json" } });
  })
  .get("/fail", () => error(400, "bad request, on purpose"));

export default router;
