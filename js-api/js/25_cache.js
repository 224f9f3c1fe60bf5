// The Workers Cache API: `caches.default` and `caches.open(name)`, each a Cache whose put,
// match and delete go to the response store of the process (js-api/src/cache.rs), where a
// function reaches only its own entries. As on Workers: only GET requests are cached, keyed
// by URL; what is kept and for how long follows the response's headers; `put` reads the
// response's body; `match` answers with `cf-cache-status: HIT`, or undefined. Not provided,
// as on Workers: add, addAll, matchAll, keys.
import { primordials } from "ext:core/mod.js";
import { op_tern_cache_delete, op_tern_cache_match, op_tern_cache_put } from "ext:core/ops";

const {
  ObjectPrototypeIsPrototypeOf,
  StringPrototypeIndexOf,
  StringPrototypeSlice,
  StringPrototypeSplit,
  Symbol,
  TypeError,
  Uint8Array,
} = primordials;

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
