// A/B personalization: a visitor keeps the variant in their `ab` cookie; the `x-ab-variant`
// header forces one (for QA); new visitors are assigned by a hash of `x-client-id` when
// present (stable per client), else at random, and get the cookie.
const VARIANTS = {
  A: { headline: "Fast functions, everywhere", color: "#0a7" },
  B: { headline: "Your code, one millisecond from every user", color: "#a30" },
};

function cookie(request, name) {
  const header = request.headers.get("cookie") ?? "";
  for (const part of header.split(";")) {
    const [k, ...v] = part.trim().split("=");
    if (k === name) return v.join("=");
  }
  return null;
}

async function bucket(clientId) {
  const digest = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(clientId));
  return new Uint8Array(digest)[0] % 100;
}

export default {
  async fetch(request, env) {
    const forced = request.headers.get("x-ab-variant");
    const remembered = cookie(request, "ab");
    let variant = forced in VARIANTS ? forced : remembered in VARIANTS ? remembered : null;
    const isNew = variant === null;
    if (isNew) {
      const clientId = request.headers.get("x-client-id");
      const roll = clientId ? await bucket(clientId) : Math.floor(Math.random() * 100);
      variant = roll < Number(env.B_PERCENT) ? "B" : "A";
    }
    const { headline, color } = VARIANTS[variant];
    const html = `<!doctype html><title>Tern</title><h1 style="color:${color}">${headline}</h1>`;
    const headers = { "content-type": "text/html; charset=utf-8", "x-variant": variant, "vary": "cookie" };
    if (isNew) headers["set-cookie"] = `ab=${variant}; Path=/; Max-Age=2592000; SameSite=Lax`;
    return new Response(html, { headers });
  },
};
