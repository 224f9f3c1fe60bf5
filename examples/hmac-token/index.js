// HMAC-signed tokens with crypto.subtle: GET /sign?sub=NAME issues one, and every other
// path requires `Authorization: Bearer TOKEN`. A token is base64url(JSON payload) + "." +
// base64url(HMAC-SHA256(payload)); it carries its subject and expiry.
const encoder = new TextEncoder();

const b64url = (bytes) => btoa(String.fromCharCode(...bytes)).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
const unb64url = (text) => Uint8Array.from(atob(text.replace(/-/g, "+").replace(/_/g, "/")), (c) => c.charCodeAt(0));

let cachedKey;
function key(secret) {
  cachedKey ??= crypto.subtle.importKey("raw", encoder.encode(secret), { name: "HMAC", hash: "SHA-256" }, false, ["sign", "verify"]);
  return cachedKey;
}

async function sign(payload, secret) {
  const body = b64url(encoder.encode(JSON.stringify(payload)));
  const mac = await crypto.subtle.sign("HMAC", await key(secret), encoder.encode(body));
  return `${body}.${b64url(new Uint8Array(mac))}`;
}

async function verify(token, secret) {
  const [body, mac] = token.split(".");
  if (!body || !mac) return { error: "malformed token" };
  let valid;
  try {
    valid = await crypto.subtle.verify("HMAC", await key(secret), unb64url(mac), encoder.encode(body));
  } catch {
    return { error: "malformed token" };
  }
  if (!valid) return { error: "bad signature" };
  const payload = JSON.parse(new TextDecoder().decode(unb64url(body)));
  if (payload.exp < Date.now() / 1000) return { error: "token expired" };
  return { payload };
}

export default {
  async fetch(request, env) {
    const url = new URL(request.url);
    if (url.pathname === "/sign") {
      const sub = url.searchParams.get("sub");
      if (!sub) return Response.json({ error: "sub is required" }, { status: 400 });
      const exp = Math.floor(Date.now() / 1000) + Number(env.TOKEN_TTL_SECONDS);
      return Response.json({ token: await sign({ sub, exp }, env.TOKEN_SECRET) });
    }
    const auth = request.headers.get("authorization") ?? "";
    if (!auth.startsWith("Bearer ")) {
      return Response.json({ error: "missing bearer token" }, { status: 401, headers: { "www-authenticate": "Bearer" } });
    }
    const { payload, error } = await verify(auth.slice(7), env.TOKEN_SECRET);
    if (error) return Response.json({ error }, { status: 401, headers: { "www-authenticate": "Bearer" } });
    return Response.json({ hello: payload.sub, expires: payload.exp });
  },
};
