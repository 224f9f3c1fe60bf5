// Exercises every Web API group of the WinterTC minimum common API from inside a function.
// Answers JSON: { group: "ok" | "FAIL: why" }.
const eq = (a, b, what) => {
  const [x, y] = [JSON.stringify(a), JSON.stringify(b)];
  if (x !== y) throw new Error(`${what}: got ${x}, want ${y}`);
};

const checks = {
  async globals() {
    const names = [
      "fetch", "Request", "Response", "Headers", "FormData", "Blob", "File", "URL", "URLSearchParams",
      "URLPattern", "TextEncoder", "TextDecoder", "TextEncoderStream", "TextDecoderStream", "ReadableStream",
      "WritableStream", "TransformStream", "CompressionStream", "DecompressionStream", "AbortController",
      "AbortSignal", "Event", "EventTarget", "CustomEvent", "DOMException", "atob", "btoa", "setTimeout",
      "clearTimeout", "setInterval", "clearInterval", "queueMicrotask", "structuredClone", "crypto",
      "performance", "navigator", "console", "self", "WebAssembly",
    ];
    eq(names.filter((n) => globalThis[n] === undefined), [], "missing globals");
    eq(typeof Deno, "undefined", "Deno namespace hidden");
    eq(typeof __bootstrap, "undefined", "bootstrap internals hidden");
    eq(Object.getOwnPropertySymbols(globalThis).map(String).filter((s) => s.includes("finishBoot")), [], "boot step gone");
    eq(self === globalThis, true, "self");
  },
  async url() {
    const u = new URL("../b?x=1&y=2#f", "https://user@example.com:8080/a/c");
    eq([u.href, u.port, u.searchParams.get("y")], ["https://user@example.com:8080/b?x=1&y=2#f", "8080", "2"], "URL");
    const p = new URLSearchParams("a=1&a=2&b=%20");
    eq([p.getAll("a"), p.get("b")], [["1", "2"], " "], "URLSearchParams");
    const m = new URLPattern({ pathname: "/users/:id" }).exec("https://x.test/users/42");
    eq(m.pathname.groups.id, "42", "URLPattern");
  },
  async encoding() {
    const bytes = new TextEncoder().encode("héllo ✓");
    eq(new TextDecoder().decode(bytes), "héllo ✓", "TextEncoder/Decoder");
    eq([btoa("hi"), atob("aGk=")], ["aGk=", "hi"], "base64");
    const s = new Blob(["héllo"]).stream().pipeThrough(new TextDecoderStream()).pipeThrough(new TextEncoderStream());
    eq(new TextDecoder().decode(await new Response(s).arrayBuffer()), "héllo", "encoding streams");
  },
  async streams() {
    const upper = new TransformStream({ transform(chunk, c) { c.enqueue(chunk.toUpperCase()); } });
    const r = new ReadableStream({ start(c) { c.enqueue("a"); c.enqueue("b"); c.close(); } }).pipeThrough(upper);
    let got = "";
    for await (const chunk of r) got += chunk;
    eq(got, "AB", "Readable/TransformStream");
    const written = [];
    const w = new WritableStream({ write(chunk) { written.push(chunk); } });
    const writer = w.getWriter();
    await writer.write("x");
    await writer.close();
    eq(written, ["x"], "WritableStream");
    const gz = new Blob(["hello ".repeat(100)]).stream().pipeThrough(new CompressionStream("gzip"));
    const back = await new Response(gz.pipeThrough(new DecompressionStream("gzip"))).text();
    eq(back.length, 600, "Compression/DecompressionStream");
  },
  async fetchClasses() {
    const h = new Headers({ "X-A": "1" });
    h.append("x-a", "2");
    eq(h.get("x-a"), "1, 2", "Headers");
    const req = new Request("https://example.com/p", { method: "POST", body: "abc", headers: { "content-type": "text/plain" } });
    eq([req.method, await req.text()], ["POST", "abc"], "Request");
    const res = Response.json({ ok: true }, { status: 201 });
    eq([res.status, (await res.json()).ok, res.headers.get("content-type")], [201, true, "application/json"], "Response.json");
    const fd = new FormData();
    fd.append("name", "tern");
    fd.append("file", new File(["data"], "a.txt", { type: "text/plain" }));
    const parsed = await new Response(fd).formData();
    eq([parsed.get("name"), await parsed.get("file").text(), parsed.get("file").name], ["tern", "data", "a.txt"], "FormData");
    const blob = new Blob(["ab", new Uint8Array([99])], { type: "text/plain" });
    eq([blob.size, blob.type, await blob.slice(1).text()], [3, "text/plain", "bc"], "Blob");
    const data = await fetch("data:text/plain;base64,aGVsbG8=");
    eq(await data.text(), "hello", "fetch(data:)");
  },
  async events() {
    const target = new EventTarget();
    let seen = null;
    target.addEventListener("ping", (e) => { seen = e.detail; });
    target.dispatchEvent(new CustomEvent("ping", { detail: 7 }));
    eq(seen, 7, "EventTarget/CustomEvent");
    eq(new Event("x").type, "x", "Event");
    const ac = new AbortController();
    ac.abort("why");
    eq([ac.signal.aborted, ac.signal.reason], [true, "why"], "AbortController");
    eq(AbortSignal.abort().aborted, true, "AbortSignal.abort");
    const e = new DOMException("m", "NotFoundError");
    eq([e.name, e.code, e instanceof Error], ["NotFoundError", 8, true], "DOMException");
  },
  async timers() {
    const order = [];
    await new Promise((resolve) => {
      const cancelled = setTimeout(() => order.push("cancelled"), 1);
      clearTimeout(cancelled);
      let n = 0;
      const iv = setInterval(() => {
        order.push(`tick${++n}`);
        if (n === 2) {
          clearInterval(iv);
          resolve();
        }
      }, 1);
      queueMicrotask(() => order.push("micro"));
    });
    eq(order, ["micro", "tick1", "tick2"], "timers");
  },
  async cloning() {
    const v = structuredClone({ d: new Date(5), m: new Map([[1, 2]]), u: new Uint8Array([1, 2]) });
    eq([v.d.getTime(), v.m.get(1), [...v.u]], [5, 2, [1, 2]], "structuredClone");
  },
  async crypto() {
    const buf = crypto.getRandomValues(new Uint8Array(16));
    eq(buf.length, 16, "getRandomValues");
    eq(/^[0-9a-f-]{36}$/.test(crypto.randomUUID()), true, "randomUUID");
    const digest = await crypto.subtle.digest("SHA-256", new TextEncoder().encode("abc"));
    eq([...new Uint8Array(digest)].slice(0, 4), [186, 120, 22, 191], "subtle.digest");
    const key = await crypto.subtle.importKey("raw", new TextEncoder().encode("k"), { name: "HMAC", hash: "SHA-256" }, false, ["sign", "verify"]);
    const sig = await crypto.subtle.sign("HMAC", key, new TextEncoder().encode("m"));
    eq(await crypto.subtle.verify("HMAC", key, sig, new TextEncoder().encode("m")), true, "HMAC");
  },
  async platform() {
    const t0 = performance.now();
    eq(typeof t0 === "number" && t0 >= 0, true, "performance.now");
    // The clock starts when this isolate boots, not when its startup snapshot was built: the
    // two clocks agree (hr-time: timeOrigin + now() is the current time).
    const skew = Math.abs(performance.timeOrigin + performance.now() - Date.now());
    eq(skew < 1000, true, `performance.timeOrigin + now() is Date.now() (off by ${skew} ms)`);
    eq(navigator.userAgent.startsWith("Tern/"), true, "navigator.userAgent");
    console.log("console works", { n: 1 });
    console.error("console error works");
  },
  async webassembly() {
    // (module (func (export "add") (param i32 i32) (result i32) local.get 0 local.get 1 i32.add))
    const bytes = new Uint8Array([0, 97, 115, 109, 1, 0, 0, 0, 1, 7, 1, 96, 2, 127, 127, 1, 127, 3, 2, 1, 0, 7, 7, 1, 3, 97, 100, 100, 0, 0, 10, 9, 1, 7, 0, 32, 0, 32, 1, 106, 11]);
    const { instance } = await WebAssembly.instantiate(bytes);
    eq(instance.exports.add(2, 3), 5, "WebAssembly");
  },
};

export default {
  async fetch(request) {
    const only = new URL(request.url).searchParams.get("only");
    const results = {};
    for (const [name, check] of Object.entries(checks)) {
      if (only && only !== name) continue;
      try {
        await check();
        results[name] = "ok";
      } catch (e) {
        results[name] = `FAIL: ${e && e.stack || e}`;
      }
    }
    return Response.json(results);
  },
};
