// A Hono app written for Cloudflare Workers, unchanged: routing, middleware, JSON,
// validation-style errors, HTTPException and c.env.
import { Hono } from "hono";
import { cors } from "hono/cors";
import { HTTPException } from "hono/http-exception";

const app = new Hono();
app.use("/api/*", cors({ origin: "https://example.com" }));
app.use("*", async (c, next) => {
  await next();
  c.header("x-powered-by", "hono-on-tern");
});
app.get("/", (c) => c.text("Hello Hono!"));
app.get("/api/users/:id", (c) => c.json({ id: c.req.param("id"), q: c.req.query("q") ?? null }));
app.post("/api/echo", async (c) => c.json({ got: await c.req.json() }, 201));
app.get("/env", (c) => c.json({ greeting: c.env.GREETING ?? null }));
app.get("/teapot", () => {
  throw new HTTPException(418, { message: "I am a teapot" });
});
app.notFound((c) => c.json({ error: "not found" }, 404));

export default app;
