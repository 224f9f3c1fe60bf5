// The Workers Cache API: `caches.default` and `caches.open(name)`, each a Cache whose put,
// match and delete go to the response store of the process (js-api/src/cache.rs), where a
// function reaches only its own entries. As on Workers: only GET requests are cached, keyed
// by URL; what is kept and for how long follows the response's headers; `put` reads the
// response's body; `match` answers with `cf-cache-status: HIT`, or undefined, and answers
// the request's conditions (`If-None-Match`, `If-Modified-Since`: 304) and single byte
// range (206, or 416) from a stored 200. Not provided, as on Workers: add, addAll,
// matchAll, keys.
import { primordials } from "ext:core/mod.js";
import { op_tern_cache_delete, op_tern_cache_match, op_tern_cache_put } from "ext:core/ops";

const {
  ArrayPrototypeSome,
  DateParse,
  MathMin,
  NumberIsNaN,
  NumberParseInt,
  ObjectPrototypeIsPrototypeOf,
  RegExpPrototypeTest,
  StringPrototypeStartsWith,
  StringPrototypeTrim,
  TypedArrayPrototypeGetLength,
  TypedArrayPrototypeSubarray,
  StringPrototypeIndexOf,
  StringPrototypeSlice,
  StringPrototypeSplit,
  Symbol,
  TypeError,
  Uint8Array,
} = primordials;

const DIGITS = /^[0-9]+$/;

/** Whether a stored response with `headers` satisfies the conditions of `request`: 304. */
function notModified(request, headers) {
  const etag = headers.get("etag");
  const ifNoneMatch = request.headers.get("if-none-match");
  if (ifNoneMatch !== null) {
    // Weak comparison (RFC 9110 13.1.2); with If-None-Match, If-Modified-Since is ignored.
    const opaque = (tag) => {
      const t = StringPrototypeTrim(tag);
      return StringPrototypeStartsWith(t, "W/") ? StringPrototypeSlice(t, 2) : t;
    };
    if (StringPrototypeTrim(ifNoneMatch) === "*") return true;
    return etag !== null &&
      ArrayPrototypeSome(StringPrototypeSplit(ifNoneMatch, ","), (tag) => opaque(tag) === opaque(etag));
  }
  const since = request.headers.get("if-modified-since");
  const modified = headers.get("last-modified");
  if (since === null || modified === null) return false;
  const a = DateParse(since);
  const b = DateParse(modified);
  return !NumberIsNaN(a) && !NumberIsNaN(b) && b <= a;
}

/**
 * The one byte range `request` asks for of a body of `length` bytes: [start, end] (end
 * inclusive), "unsatisfiable", or null to send it whole (no Range, not bytes, several ranges).
 */
function byteRange(request, length) {
  const range = request.headers.get("range");
  if (range === null) return null;
  const spec = StringPrototypeTrim(range);
  if (!StringPrototypeStartsWith(spec, "bytes=")) return null;
  const set = StringPrototypeSlice(spec, 6);
  if (StringPrototypeIndexOf(set, ",") !== -1) return null;
  const dash = StringPrototypeIndexOf(set, "-");
  if (dash === -1) return null;
  const first = StringPrototypeTrim(StringPrototypeSlice(set, 0, dash));
  const last = StringPrototypeTrim(StringPrototypeSlice(set, dash + 1));
  const number = (text) => (RegExpPrototypeTest(DIGITS, text) ? NumberParseInt(text, 10) : NaN);
  if (first === "") {
    const suffix = number(last);
    if (NumberIsNaN(suffix)) return null;
    if (suffix === 0 || length === 0) return "unsatisfiable";
    return [length - MathMin(suffix, length), length - 1];
  }
  const start = number(first);
  const end = last === "" ? Infinity : number(last);
  if (NumberIsNaN(start) || NumberIsNaN(end) || end < start) return null;
  if (start >= length) return "unsatisfiable";
  return [start, MathMin(end, length - 1)];
}

export function installCaches(
  { Headers, Request, RequestPrototype, Response, ResponsePrototype, toInnerResponse, headerLines },
) {
  const constructing = Symbol("constructing");
  const requestOf = (input) => (ObjectPrototypeIsPrototypeOf(RequestPrototype, input) ? input : new Request(input));
  const matchable = (request, options) => request.method === "GET" || options?.ignoreMethod === true;

  class Cache {
    #name;
    constructor(key, name) {
      if (key !== constructing) throw new TypeError("Illegal constructor: use caches.default or caches.open(name)");
      this.#name = name;
    }

    async put(request, response) {
      const req = requestOf(request);
      if (req.method !== "GET") throw new TypeError(`Cache.put: only GET requests can be cached, not ${req.method}`);
      if (!ObjectPrototypeIsPrototypeOf(ResponsePrototype, response)) {
        throw new TypeError("Cache.put: the second argument must be a Response");
      }
      if (response.bodyUsed) throw new TypeError("Cache.put: the response's body was already read");
      const lines = headerLines(toInnerResponse(response).headerList);
      const body = new Uint8Array(await response.arrayBuffer());
      op_tern_cache_put(this.#name, req.url, response.status, lines, body);
    }

    async match(request, options) {
      const req = requestOf(request);
      if (!matchable(req, options)) return undefined;
      const hit = op_tern_cache_match(this.#name, req.url);
      if (hit === null) return undefined;
      const { 0: status, 1: lines, 2: body } = hit;
      const headers = new Headers();
      if (lines !== "") {
        for (const line of StringPrototypeSplit(lines, "\n")) {
          const colon = StringPrototypeIndexOf(line, ":");
          headers.append(StringPrototypeSlice(line, 0, colon), StringPrototypeSlice(line, colon + 1));
        }
      }
      headers.set("cf-cache-status", "HIT");
      if (status === 200 && notModified(req, headers)) {
        headers.delete("content-length");
        return new Response(null, { status: 304, headers });
      }
      const length = TypedArrayPrototypeGetLength(body);
      const range = status === 200 ? byteRange(req, length) : null;
      if (range === "unsatisfiable") {
        headers.set("content-range", `bytes */${length}`);
        headers.delete("content-length");
        return new Response(null, { status: 416, headers });
      }
      if (range !== null) {
        const { 0: start, 1: end } = range;
        headers.set("content-range", `bytes ${start}-${end}/${length}`);
        headers.delete("content-length");
        const part = TypedArrayPrototypeSubarray(body, start, end + 1);
        return new Response(req.method === "HEAD" ? null : part, { status: 206, headers });
      }
      const noBody = status === 204 || status === 205 || status === 304 || req.method === "HEAD";
      return new Response(noBody ? null : body, { status, headers });
    }

    async delete(request, options) {
      const req = requestOf(request);
      if (!matchable(req, options)) return false;
      return op_tern_cache_delete(this.#name, req.url);
    }
  }

  class CacheStorage {
    #default = null;
    constructor(key) {
      if (key !== constructing) throw new TypeError("Illegal constructor: use the global caches");
    }

    get default() {
      this.#default ??= new Cache(constructing, "");
      return this.#default;
    }

    async open(name) {
      // Named caches are apart from the default one, and from each other.
      return new Cache(constructing, `named:${name}`);
    }
  }

  return { caches: new CacheStorage(constructing), Cache, CacheStorage };
}
