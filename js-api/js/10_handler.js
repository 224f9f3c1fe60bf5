// The Workers handler protocol: takes requests from the host (op_tern_try_next_request, or
// op_tern_next_request when none is waiting), builds Request objects whose bodies stream
// from the host, calls the function's handler
// (`export default { fetch(request, env, ctx) }` or a service-worker "fetch" listener) and
// sends the Response back, streaming its body chunk by chunk. Failures become a tern-error
// answer from the host; a function's failure never ends the serve loop.
import { core, internals, primordials } from "ext:core/mod.js";
import {
  op_tern_body_close,
  op_tern_body_read,
  op_tern_body_write,
  op_tern_env,
  op_tern_fail,
  op_tern_next_request,
  op_tern_respond,
  op_tern_respond_stream,
  op_tern_respond_text,
  op_tern_try_next_request,
  op_tern_yield,
} from "ext:core/ops";
import { wasiFunction } from "ext:tern_api/20_wasi.js";

const {
  ArrayBufferIsView,
  ArrayPrototypePush,
  JSONParse,
  ObjectCreate,
  ObjectDefineProperty,
  ObjectFreeze,
  ObjectPrototypeIsPrototypeOf,
  PromisePrototypeThen,
  PromiseResolve,
  StringPrototypeIndexOf,
  StringPrototypeSlice,
  TypedArrayPrototypeGetSymbolToStringTag,
} = primordials;

/**
 * A header list as the respond and cache ops take it: one "name:value" line per header
 * (names hold no colon and neither holds a line break: Headers refuses them).
 */
export function headerLines(list) {
  let lines = "";
  for (let i = 0; i < list.length; i++) {
    const pair = list[i];
    lines += i === 0 ? pair[0] + ":" + pair[1] : "\n" + pair[0] + ":" + pair[1];
  }
  return lines;
}

/** The [name, value] pairs of a header list given as "name:value" lines. */
function headerPairs(lines) {
  const list = [];
  if (lines === "") return list;
  let start = 0;
  for (;;) {
    const end = StringPrototypeIndexOf(lines, "\n", start);
    const line = end === -1 ? StringPrototypeSlice(lines, start) : StringPrototypeSlice(lines, start, end);
    const colon = StringPrototypeIndexOf(line, ":");
    ArrayPrototypePush(list, [StringPrototypeSlice(line, 0, colon), StringPrototypeSlice(line, colon + 1)]);
    if (end === -1) return list;
    start = end + 1;
  }
}

export function installHandlerProtocol({ streams, request, response, body, reportUncaught }) {
  const { ReadableStream, ReadableStreamPrototype } = streams;
  const { newInnerRequest, fromInnerRequest } = request;
  const { toInnerResponse, ResponsePrototype } = response;
  const { InnerBody } = body;
  const EventTargetAdd = globalThis.EventTarget.prototype.addEventListener;
  const EventTargetRemove = globalThis.EventTarget.prototype.removeEventListener;

  // Service-worker form: "fetch" listeners are ours to call; other events go to EventTarget.
  const fetchListeners = [];
  globalThis.addEventListener = function addEventListener(type, listener, options) {
    if (type === "fetch") {
      if (typeof listener === "function" || typeof listener?.handleEvent === "function") {
        fetchListeners.push(listener);
      }
      return;
    }
    return EventTargetAdd.call(globalThis, type, listener, options);
  };
  globalThis.removeEventListener = function removeEventListener(type, listener, options) {
    if (type === "fetch") {
      const i = fetchListeners.indexOf(listener);
      if (i >= 0) fetchListeners.splice(i, 1);
      return;
    }
    return EventTargetRemove.call(globalThis, type, listener, options);
  };

  class FetchEvent extends globalThis.Event {
    #request;
    #ctx;
    response = null;
    constructor(type, init) {
      super(type);
      this.#request = init.request;
      this.#ctx = init.ctx;
    }
    get request() {
      return this.#request;
    }
    respondWith(r) {
      if (this.response !== null) throw new DOMException("respondWith() was already called", "InvalidStateError");
      this.response = Promise.resolve(r);
    }
    waitUntil(p) {
      this.#ctx.waitUntil(p);
    }
    passThroughOnException() {}
  }
  globalThis.FetchEvent = FetchEvent;

  // One prototype for every request's ctx: creating a ctx is one small object.
  const ctxPrototype = {
    waitUntil(promise) {
      // Keeping a reference is enough: the isolate's event loop runs until it settles.
      Promise.resolve(promise).catch((e) => reportUncaught("in waitUntil", e));
    },
    passThroughOnException() {},
  };
  const waitUntil = ctxPrototype.waitUntil;

  // The function's env, parsed once: the same object for every handler call and for
  // `import { env } from "cloudflare:workers"`, whichever asks first.
  let env = null;
  function functionEnv() {
    if (env === null) env = JSONParse(op_tern_env());
    return env;
  }
  // What `cloudflare:workers` (30_cloudflare_workers.js, a lazily loaded script) shares.
  internals.ternWorkers = { functionEnv, waitUntil };
  const CLOUDFLARE_WORKERS = "ext:tern_api/30_cloudflare_workers.js";

  function makeCtx() {
    const ctx = ObjectCreate(ctxPrototype);
    ctx.props = {};
    return ctx;
  }

  // `request.cf` when the node knows nothing of the client (as under `tern dev`).
  const NO_CF = ObjectFreeze({});

  function makeRequest(id, method, url, headerText, hasBody, cf) {
    let inner = null;
    if (hasBody) {
      const stream = new ReadableStream({
        async pull(controller) {
          const chunk = await op_tern_body_read(id);
          if (chunk.byteLength === 0) controller.close();
          else controller.enqueue(chunk);
        },
      }, { highWaterMark: 0 });
      inner = new InnerBody(stream);
    }
    // The header list is split into pairs only if the function reads a header.
    const req = fromInnerRequest(newInnerRequest(method, url, () => headerPairs(headerText), inner, false), "immutable");
    // `request.cf` as on Workers: what the node knows of the client (country, latitude,
    // longitude, colo), read-only.
    ObjectDefineProperty(req, "cf", { value: cf === null ? NO_CF : ObjectFreeze(JSONParse(cf)), enumerable: true });
    return req;
  }

  function describe(value) {
    if (value === undefined) return "undefined";
    if (value === null) return "null";
    if (typeof value === "object") return `an object (${value?.constructor?.name ?? "no constructor"})`;
    return `a ${typeof value} (${String(value).slice(0, 60)})`;
  }

  function errorText(e) {
    // Out of heap: building a stack trace would need the memory that is not there.
    if (e && typeof e === "object" && e.message === "out of memory") return "InternalError: out of memory";
    return e && typeof e === "object" && "stack" in e ? String(e.stack) : String(e);
  }

  function toBytes(chunk) {
    if (ArrayBufferIsView(chunk)) {
      return TypedArrayPrototypeGetSymbolToStringTag(chunk) === "Uint8Array"
        ? chunk
        : new Uint8Array(chunk.buffer, chunk.byteOffset, chunk.byteLength);
    }
    if (chunk instanceof ArrayBuffer) return new Uint8Array(chunk);
    throw new TypeError(`response body chunks must be Uint8Array or ArrayBuffer, got ${describe(chunk)}`);
  }

  /** Sends `res`; returns a promise only while a streamed body is still being written. */
  function sendResponse(id, res) {
    if (!ObjectPrototypeIsPrototypeOf(ResponsePrototype, res)) {
      op_tern_fail(id, "invalid_response", `the handler returned ${describe(res)}, not a Response`);
      return;
    }
    const inner = toInnerResponse(res);
    if (inner.type === "error") {
      op_tern_fail(id, "invalid_response", "the handler returned Response.error()");
      return;
    }
    const status = inner.status;
    const headerList = headerLines(inner.headerList);
    const innerBody = inner.body;
    // The respond ops refuse what HTTP cannot carry (say, a control character in a header
    // value, which the Fetch spec allows): that is the function's invalid response.
    try {
      if (innerBody === null) {
        op_tern_respond(id, status, headerList, null);
        return;
      }
      const source = innerBody.streamOrStatic;
      if (!ObjectPrototypeIsPrototypeOf(ReadableStreamPrototype, source)) {
        source.consumed = true;
        if (typeof source.body === "string") op_tern_respond_text(id, status, headerList, source.body);
        else op_tern_respond(id, status, headerList, source.body);
        return;
      }
      op_tern_respond_stream(id, status, headerList);
    } catch (e) {
      op_tern_fail(id, "invalid_response", e.message);
      return;
    }
    return streamBody(id, innerBody.streamOrStatic);
  }

  async function streamBody(id, source) {
    const reader = source.getReader();
    for (;;) {
      let next;
      try {
        next = await reader.read();
      } catch (e) {
        op_tern_fail(id, "uncaught_exception", `response body stream failed: ${errorText(e)}`);
        return;
      }
      if (next.done) break;
      let bytes;
      try {
        bytes = toBytes(next.value);
      } catch (e) {
        reader.cancel(e).catch(() => {});
        op_tern_fail(id, "invalid_response", e.message);
        return;
      }
      try {
        await op_tern_body_write(id, bytes);
      } catch (e) {
        // The client went away: stop the function's stream, nothing to report.
        reader.cancel(e).catch(() => {});
        op_tern_body_close(id);
        return;
      }
    }
    op_tern_body_close(id);
  }

  function failed(id) {
    return (e) => op_tern_fail(id, "uncaught_exception", errorText(e));
  }

  /** Runs the handler; synchronous handlers answer without a single promise. */
  function handle(handler, exchange) {
    const id = exchange[0];
    let res;
    let thenable;
    try {
      res = handler(makeRequest(id, exchange[1], exchange[2], exchange[3], exchange[4], exchange[5]), makeCtx());
      // Reading `then` runs user code (a getter may throw): keep it inside the try.
      thenable = res !== null && typeof res === "object" && !ObjectPrototypeIsPrototypeOf(ResponsePrototype, res) &&
        typeof res.then === "function";
    } catch (e) {
      op_tern_fail(id, "uncaught_exception", errorText(e));
      return;
    }
    if (thenable) {
      PromisePrototypeThen(PromiseResolve(res), (r) => respondSafely(id, r), failed(id));
      return;
    }
    respondSafely(id, res);
  }

  function respondSafely(id, res) {
    try {
      const streaming = sendResponse(id, res);
      if (streaming !== undefined) PromisePrototypeThen(streaming, undefined, failed(id));
    } catch (e) {
      op_tern_fail(id, "uncaught_exception", errorText(e));
    }
  }

  function moduleHandler(mod, env) {
    return (req, ctx) => mod.fetch(req, env, ctx);
  }

  /**
   * A default export that is a class: Workers serves one extending `WorkerEntrypoint` with
   * a new instance per request. Anything else is refused, saying what would be served.
   */
  function entrypointHandler(Entrypoint, env) {
    const workers = core.loadExtScript(CLOUDFLARE_WORKERS);
    const proto = Entrypoint.prototype;
    if (ObjectPrototypeIsPrototypeOf(workers.WorkerEntrypoint.prototype, proto)) {
      if (typeof proto.fetch !== "function") {
        throw new TypeError(
          `the default export (class ${Entrypoint.name || "anonymous"} extends WorkerEntrypoint) has no fetch() method`,
        );
      }
      return (req, ctx) => new Entrypoint(ctx, env).fetch(req);
    }
    for (const other of ["DurableObject", "WorkflowEntrypoint"]) {
      if (ObjectPrototypeIsPrototypeOf(workers[other].prototype, proto)) {
        throw new TypeError(
          `the default export extends ${other}, which Tern does not run: ` +
            "export a class extending WorkerEntrypoint, or an object with a fetch() method",
        );
      }
    }
    throw new TypeError(
      `the default export is a function, not a handler: export a class extending WorkerEntrypoint ` +
        `(from "cloudflare:workers") or an object with a fetch() method`,
    );
  }

  function serviceWorkerHandler() {
    return async (req, ctx) => {
      const event = new FetchEvent("fetch", { request: req, ctx });
      for (const listener of fetchListeners) {
        if (typeof listener === "function") listener.call(globalThis, event);
        else listener.handleEvent(event);
        if (event.response !== null) break;
      }
      if (event.response === null) {
        throw new TypeError("no \"fetch\" listener called event.respondWith()");
      }
      return await event.response;
    };
  }

  // Requests taken in a row before the loop lets the event loop turn (see eachRequest).
  const BURST = 16;

  /**
   * Calls `each` with every request the host sends, until it closes the queue. Requests
   * already waiting are taken without a promise each. After BURST requests in a row the loop
   * awaits op_tern_yield, which resolves only on the event loop's next turn: an async op that
   * is ready at once (op_tern_next_request with requests queued) resolves without leaving JS,
   * so while requests kept arriving, timers and I/O completions (a fetch's response) waited
   * until the queue ran dry. The loop starts with that turn: `serve` runs inside the
   * runtime's call that starts serving, and a request handled there would be metered as
   * startup, not as a request.
   */
  async function eachRequest(each) {
    let taken = BURST;
    for (;;) {
      if (taken === BURST) {
        await op_tern_yield();
        taken = 0;
      }
      let exchange = op_tern_try_next_request();
      if (exchange === null) {
        exchange = await op_tern_next_request();
        if (exchange === null) return;
        taken = 0;
      }
      taken++;
      each(exchange);
    }
  }

  /** Serves a WebAssembly (WASI) function: the runner compiles its main module itself. */
  function serveWasi(mainPath, env) {
    const handleWasi = wasiFunction(mainPath, env);
    eachRequest((exchange) => {
      try {
        const pending = handleWasi([exchange[0], exchange[1], exchange[2], headerPairs(exchange[3]), exchange[4]]);
        if (pending !== undefined) PromisePrototypeThen(pending, undefined, failed(exchange[0]));
      } catch (e) {
        op_tern_fail(exchange[0], "uncaught_exception", errorText(e));
      }
    });
  }

  /**
   * Called by the host with the main module's namespace once it has evaluated, and the
   * main module's path when it is a WebAssembly (WASI) program.
   */
  function serve(namespace, wasiMain) {
    const env = functionEnv();
    if (typeof wasiMain === "string") {
      serveWasi(wasiMain, env);
      return;
    }
    const mod = namespace.default;
    let handler;
    if (mod !== null && (typeof mod === "object" || typeof mod === "function") && typeof mod.fetch === "function") {
      handler = moduleHandler(mod, env);
    } else if (fetchListeners.length > 0) {
      handler = serviceWorkerHandler();
    } else if (typeof mod === "function") {
      handler = entrypointHandler(mod, env);
    } else {
      throw new TypeError(
        "the main module has no handler: write `export default { async fetch(request, env, ctx) { ... } }` " +
          "or call `addEventListener(\"fetch\", (event) => event.respondWith(...))`",
      );
    }
    eachRequest((exchange) => {
      try {
        handle(handler, exchange);
      } catch (e) {
        // handle() answers every failure itself; this only keeps the loop alive.
        reportUncaught("in the handler protocol", e);
      }
    });
  }
  return serve;
}
