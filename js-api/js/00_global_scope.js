// Tern's global scope: the WinterTC minimum common API, assembled from Deno's Web API
// extension crates, plus what is ours (console to the node's log, navigator, the
// Workers handler protocol in 10_handler.js). Runs once per isolate at boot.
import { core, internals, primordials } from "ext:core/mod.js";
import {
  op_tern_egress_policy,
  op_tern_heap_exhausted,
  op_tern_log,
  op_tern_module_bytes,
  op_tern_outbound_hops,
  op_tern_register_serve,
  op_tern_wasm_clamp,
  op_tern_wasm_exported_memories,
  op_tern_wasm_max_pages,
} from "ext:core/ops";
import { headerLines, installHandlerProtocol } from "ext:tern_api/10_handler.js";
import { installCaches } from "ext:tern_api/25_cache.js";

const { ObjectDefineProperty, ObjectDefineProperties, ObjectSetPrototypeOf, SymbolFor } = primordials;

// deno_fetch's 26_fetch.js reaches for Deno's telemetry crate unless these exist.
internals.__telemetry = {
  TRACING_ENABLED: false,
  PROPAGATORS: [],
  DID_NOT_ENTER: undefined,
  builtinTracer() {},
  ContextManager: { active() {} },
  enterSpan() {},
  exitSpan() {},
};
internals.__telemetryUtil = {
  updateSpanFromClientResponse() {},
  updateSpanFromError() {},
  updateSpanFromRequest() {},
};
// CryptoKeys get their brand through this symbol (structuredClone of keys needs it).
internals.kKeyObject = Symbol("kKeyObject");

const load = (specifier) => core.loadExtScript(specifier);
const url = load("ext:deno_web/00_url.js");
const urlPattern = load("ext:deno_web/01_urlpattern.js");
const domException = load("ext:deno_web/01_dom_exception.js");
const event = load("ext:deno_web/02_event.js");
const timers = load("ext:deno_web/02_timers.js");
const abortSignal = load("ext:deno_web/03_abort_signal.js");
const globalInterfaces = load("ext:deno_web/04_global_interfaces.js");
const base64 = load("ext:deno_web/05_base64.js");
const streams = load("ext:deno_web/06_streams.js");
const encoding = load("ext:deno_web/08_text_encoding.js");
const file = load("ext:deno_web/09_file.js");
const messagePort = load("ext:deno_web/13_message_port.js");
const compression = load("ext:deno_web/14_compression.js");
const performance = load("ext:deno_web/15_performance.js");
const consoleMod = load("ext:deno_web/01_console.js");
const crypto = load("ext:deno_crypto/00_crypto.js");
const headers = load("ext:deno_fetch/20_headers.js");
const formData = load("ext:deno_fetch/21_formdata.js");
const request = load("ext:deno_fetch/23_request.js");
const response = load("ext:deno_fetch/23_response.js");
const fetch = load("ext:deno_fetch/26_fetch.js");

const value = (v) => ({ value: v, writable: true, enumerable: false, configurable: true });
const enumerable = (v) => ({ value: v, writable: true, enumerable: true, configurable: true });
const getter = (get) => ({ get, set: undefined, enumerable: true, configurable: true });

// Console: deno_web's formatting, routed to the node's structured log.
consoleMod.setNoColorFns(() => true, () => true);
const console = new consoleMod.Console((message, level) => op_tern_log(level, message));

/** Logs an error nobody caught (timers, microtasks, waitUntil, unhandled rejections). */
export function reportUncaught(where, error) {
  const text = error && typeof error === "object" && "stack" in error ? String(error.stack) : String(error);
  op_tern_log(3, `Uncaught (${where}): ${text}`);
}

// Timers: a throwing callback is logged, as in Workers; it must not take the isolate down.
// A string is code to compile, which functions may not do (as in Workers): refused.
const guard = (callback) => {
  if (typeof callback !== "function") {
    throw new TypeError("timer callbacks must be functions: code in strings is not compiled");
  }
  return function (...args) {
    try {
      return callback.apply(this, args);
    } catch (e) {
      reportUncaught("in timer", e);
    }
  };
};
// Called unbound: deno_web's timers refuse a `this` other than the global object.
const { setTimeout: webSetTimeout, setInterval: webSetInterval } = timers;
function setTimeout(callback, delay = 0, ...args) {
  return webSetTimeout(guard(callback), delay, ...args);
}
function setInterval(callback, delay = 0, ...args) {
  return webSetInterval(guard(callback), delay, ...args);
}
// Outbound requests carry `tern-hops`, one more than the request that made them came with,
// so a chain of functions fetching each other through Tern is cut after 16 hops.
// A destination the egress policy refuses rejects with a TypeError (as network errors do
// in fetch) that says so, instead of Deno's advice about command-line flags.
function countingHops(webFetch, Request) {
  const { PromisePrototypeCatch, PromiseReject } = primordials;
  return function fetch(input, init = undefined) {
    let outbound;
    try {
      outbound = new Request(input, init);
      // Counts the subrequest (refused past limits.subrequests), even one the policy refuses.
      outbound.headers.set("tern-hops", String(op_tern_outbound_hops()));
      // Names the policy for deno_fetch's request hook, which checks the request and every
      // redirect hop, and removes the header before sending.
      outbound.headers.set("tern-egress", op_tern_egress_policy());
    } catch (e) {
      return PromiseReject(e);
    }
    return PromisePrototypeCatch(webFetch(outbound), (e) => {
      // A name resolving inside is refused by our resolver, under deno_fetch's "fetch failed".
      const cause = String(e?.cause?.message ?? e?.cause ?? "");
      const policy = /fetch to .* refused by the egress policy.*\)/.exec(cause);
      if (policy) throw new TypeError(policy[0]);
      if (e?.name !== "NotCapable") throw e;
      const where = /access to "([^"]*)"/.exec(String(e.message))?.[1] ?? outbound.url;
      throw new TypeError(
        `fetch to ${where} refused by the egress policy: loopback, private, link-local and metadata ` +
          `addresses are not reachable from functions (allow a range in tern.toml [egress] allow)`,
      );
    });
  };
}

// WebAssembly memories stay under the function's memory limit: every module is compiled
// from bytes whose memories have a maximum of at most the limit (js-api/src/wasm_limits.rs),
// and `new WebAssembly.Memory` is clamped the same way. The engine lets JS grow a memory a
// module exports past that maximum, so those memories get a `grow` that keeps to it.
// Modules, instances and memories are still the engine's own (`instanceof` holds).
function limitWebAssemblyMemory(WA) {
  const {
    Module: EngineModule,
    Instance: EngineInstance,
    Memory: EngineMemory,
    compile,
    instantiate,
  } = WA;
  const {
    ArrayPrototypeMap,
    FunctionPrototypeCall,
    MathMin,
    NumberIsInteger,
    ObjectAssign,
    ObjectDefineProperty,
    ObjectKeys,
    ObjectPrototypeIsPrototypeOf,
    PromisePrototypeThen,
    PromiseReject,
    PromiseResolve,
    SafeWeakMap,
    SafeWeakSet,
    StringPrototypeIncludes,
    TypeErrorPrototype,
    WeakMapPrototypeGet,
    WeakMapPrototypeSet,
    WeakSetPrototypeAdd,
    WeakSetPrototypeHas,
  } = primordials;
  const adopt = (Wrapper, Engine, statics) => {
    ObjectDefineProperty(Wrapper, "prototype", { value: Engine.prototype });
    ObjectDefineProperty(Engine.prototype, "constructor", { value: Wrapper, writable: true, configurable: true });
    for (const name of statics) Wrapper[name] = Engine[name];
    return Wrapper;
  };
  // The engine gives each memory its own `grow`, which throws TypeErrors where the spec
  // says RangeError, and "not an object" when it could not allocate the grown buffer. A
  // memory made from JS keeps its buffer in the JS heap, so that is the function's memory
  // limit: the isolate is tripped for it, as when an ArrayBuffer allocation is refused.
  const meteredGrow = (engineGrow) =>
    function grow(delta) {
      try {
        return FunctionPrototypeCall(engineGrow, this, delta);
      } catch (e) {
        if (!ObjectPrototypeIsPrototypeOf(TypeErrorPrototype, e)) throw e;
        if (e.message === "not an object") {
          op_tern_heap_exhausted();
          throw new RangeError(
            `WebAssembly.Memory.grow(): growing by ${delta} pages is over the function's memory limit (limits.memory_mib)`,
          );
        }
        if (StringPrototypeIncludes(e.message, "exceeds maximum")) {
          throw new RangeError(`WebAssembly.Memory.grow(): growing by ${delta} pages exceeds the memory's maximum`);
        }
        throw e;
      }
    };
  // Memories whose `grow` is already ours.
  const metered = new SafeWeakSet();
  // A memory a module exports: the engine raises its maximum to fit any grow from JS, so
  // the maximum (at most the function's limit) is checked here. `grow(0)` reads the size.
  const boundGrow = (memory, most) => {
    if (WeakSetPrototypeHas(metered, memory)) return;
    WeakSetPrototypeAdd(metered, memory);
    const engineGrow = memory.grow;
    const grow = meteredGrow(engineGrow);
    ObjectDefineProperty(memory, "grow", {
      value: function grow_(delta) {
        const pages = +delta;
        if (!NumberIsInteger(pages) || pages < 0 || pages > 0xffffffff) {
          throw new TypeError(`WebAssembly.Memory.grow(): ${delta} is not a page count`);
        }
        const size = FunctionPrototypeCall(engineGrow, this, 0);
        if (size + pages > most) {
          throw new RangeError(
            `WebAssembly.Memory.grow(): growing ${size} pages by ${pages} exceeds the memory's maximum of ${most} pages`,
          );
        }
        return FunctionPrototypeCall(grow, this, pages);
      },
      writable: true,
      configurable: true,
    });
  };
  // What each module exports of memories: [name, maximum pages or null].
  const exportedMemories = new SafeWeakMap();
  const clamp = (bytes) => {
    const clamped = op_tern_wasm_clamp(bytes);
    return [clamped, op_tern_wasm_exported_memories(clamped)];
  };
  const remember = (module, memories) => {
    WeakMapPrototypeSet(exportedMemories, module, memories);
    return module;
  };
  const bound = (instance, module) => {
    const limit = op_tern_wasm_max_pages();
    const exports = instance.exports;
    // A module not compiled through these wrappers: every exported memory keeps to the limit.
    const memories = WeakMapPrototypeGet(exportedMemories, module) ??
      ArrayPrototypeMap(ObjectKeys(exports), (name) => [name, null]);
    for (const { 0: name, 1: max } of memories) {
      const memory = exports[name];
      if (ObjectPrototypeIsPrototypeOf(EngineMemory.prototype, memory)) boundGrow(memory, MathMin(max ?? limit, limit));
    }
    return instance;
  };
  WA.Module = adopt(function Module(bytes) {
    if (new.target === undefined) throw new TypeError("WebAssembly.Module must be called with new");
    const { 0: clamped, 1: memories } = clamp(bytes);
    return remember(new EngineModule(clamped), memories);
  }, EngineModule, ["exports", "imports", "customSections"]);
  WA.Instance = adopt(function Instance(module, imports) {
    if (new.target === undefined) throw new TypeError("WebAssembly.Instance must be called with new");
    return bound(new EngineInstance(module, imports), module);
  }, EngineInstance, []);
  WA.Memory = adopt(function Memory(descriptor) {
    if (new.target === undefined) throw new TypeError("WebAssembly.Memory must be called with new");
    const most = op_tern_wasm_max_pages();
    const wanted = ObjectAssign({}, descriptor);
    if (wanted.initial > most) {
      throw new RangeError(`WebAssembly.Memory of ${wanted.initial} pages is over the function's memory limit (limits.memory_mib)`);
    }
    wanted.maximum = MathMin(wanted.maximum ?? most, most);
    const memory = new EngineMemory(wanted);
    WeakSetPrototypeAdd(metered, memory);
    ObjectDefineProperty(memory, "grow", { value: meteredGrow(memory.grow) });
    return memory;
  }, EngineMemory, []);
  WA.compile = function compile_(bytes) {
    try {
      const { 0: clamped, 1: memories } = clamp(bytes);
      return PromisePrototypeThen(compile(clamped), (module) => remember(module, memories));
    } catch (e) {
      return PromiseReject(e);
    }
  };
  WA.instantiate = function instantiate_(source, imports) {
    if (source instanceof EngineModule) {
      return PromisePrototypeThen(instantiate(source, imports), (instance) => bound(instance, source));
    }
    try {
      const { 0: clamped, 1: memories } = clamp(source);
      return PromisePrototypeThen(instantiate(clamped, imports), (result) => {
        bound(result.instance, remember(result.module, memories));
        return result;
      });
    } catch (e) {
      return PromiseReject(e);
    }
  };
  // The streaming forms read the response whole and go through the wrappers above: the
  // engine's own would compile the bytes unclamped.
  const bytesOf = (source) => PromisePrototypeThen(PromiseResolve(source), (response) => response.arrayBuffer());
  WA.compileStreaming = function compileStreaming(source) {
    return PromisePrototypeThen(bytesOf(source), (bytes) => WA.compile(bytes));
  };
  WA.instantiateStreaming = function instantiateStreaming(source, imports) {
    return PromisePrototypeThen(bytesOf(source), (bytes) => WA.instantiate(bytes, imports));
  };
}

core.setReportExceptionCallback((e) => reportUncaught("in microtask", e));
core.setUnhandledPromiseRejectionHandler((_promise, reason) => {
  reportUncaught("in promise", reason);
  return true;
});

class Navigator {
  get userAgent() {
    return "Tern/0.1";
  }
  get hardwareConcurrency() {
    return 1;
  }
  get language() {
    return "en";
  }
  get languages() {
    return ["en"];
  }
}
const navigator = new Navigator();

const cacheApi = installCaches({
  Headers: headers.Headers,
  Request: request.Request,
  RequestPrototype: request.RequestPrototype,
  Response: response.Response,
  ResponsePrototype: response.ResponsePrototype,
  toInnerResponse: response.toInnerResponse,
  headerLines,
});

// Bytes of a module of the bundle, for the `.wasm` and `.bin` imports the loader synthesizes.
const moduleBytes = (path) => op_tern_module_bytes(path);

ObjectDefineProperties(globalThis, {
  // URL
  URL: value(url.URL),
  URLSearchParams: value(url.URLSearchParams),
  URLPattern: value(urlPattern.URLPattern),
  // Events and errors
  DOMException: value(domException.DOMException),
  Event: value(event.Event),
  EventTarget: value(event.EventTarget),
  CustomEvent: value(event.CustomEvent),
  ErrorEvent: value(event.ErrorEvent),
  PromiseRejectionEvent: value(event.PromiseRejectionEvent),
  MessageEvent: value(event.MessageEvent),
  reportError: value(event.reportError),
  AbortController: value(abortSignal.AbortController),
  AbortSignal: value(abortSignal.AbortSignal),
  // Encoding
  atob: value(base64.atob),
  btoa: value(base64.btoa),
  TextEncoder: value(encoding.TextEncoder),
  TextDecoder: value(encoding.TextDecoder),
  TextEncoderStream: value(encoding.TextEncoderStream),
  TextDecoderStream: value(encoding.TextDecoderStream),
  // Streams
  ReadableStream: value(streams.ReadableStream),
  ReadableStreamDefaultReader: value(streams.ReadableStreamDefaultReader),
  ReadableStreamBYOBReader: value(streams.ReadableStreamBYOBReader),
  ReadableStreamBYOBRequest: value(streams.ReadableStreamBYOBRequest),
  ReadableByteStreamController: value(streams.ReadableByteStreamController),
  ReadableStreamDefaultController: value(streams.ReadableStreamDefaultController),
  WritableStream: value(streams.WritableStream),
  WritableStreamDefaultWriter: value(streams.WritableStreamDefaultWriter),
  WritableStreamDefaultController: value(streams.WritableStreamDefaultController),
  TransformStream: value(streams.TransformStream),
  TransformStreamDefaultController: value(streams.TransformStreamDefaultController),
  ByteLengthQueuingStrategy: value(streams.ByteLengthQueuingStrategy),
  CountQueuingStrategy: value(streams.CountQueuingStrategy),
  CompressionStream: value(compression.CompressionStream),
  DecompressionStream: value(compression.DecompressionStream),
  // Files and fetch
  Blob: value(file.Blob),
  File: value(file.File),
  FormData: value(formData.FormData),
  Headers: value(headers.Headers),
  Request: value(request.Request),
  Response: value(response.Response),
  fetch: enumerable(countingHops(fetch.fetch, request.Request)),
  caches: value(cacheApi.caches),
  Cache: value(cacheApi.Cache),
  CacheStorage: value(cacheApi.CacheStorage),
  // Scheduling and cloning
  setTimeout: enumerable(setTimeout),
  clearTimeout: enumerable(timers.clearTimeout),
  setInterval: enumerable(setInterval),
  clearInterval: enumerable(timers.clearInterval),
  structuredClone: enumerable(messagePort.structuredClone),
  MessageChannel: value(messagePort.MessageChannel),
  MessagePort: value(messagePort.MessagePort),
  // Crypto, performance, console, navigator
  crypto: getter(() => crypto.crypto),
  Crypto: value(crypto.Crypto),
  CryptoKey: value(crypto.CryptoKey),
  SubtleCrypto: value(crypto.SubtleCrypto),
  performance: getter(() => performance.performance),
  Performance: value(performance.Performance),
  console: value(console),
  navigator: getter(() => navigator),
  Navigator: value(Navigator),
  self: getter(() => globalThis),
  __ternModuleBytes: { value: moduleBytes, writable: false, enumerable: false, configurable: false },
});

// The global object is an EventTarget (addEventListener("fetch", ...) for service workers).
ObjectSetPrototypeOf(globalThis, globalInterfaces.WorkerGlobalScope.prototype);
event.setEventTargetData(globalThis);
event.saveGlobalThisReference(globalThis);

const serve = installHandlerProtocol({
  streams,
  request,
  response,
  body: load("ext:deno_fetch/22_body.js"),
  reportUncaught,
});

// Everything above may run at build time, into the startup snapshot isolates are restored
// from (runtime/build.rs). What belongs to one isolate's life is done here instead, once,
// by the runtime right after boot: the Rust side learns the handler protocol's entry, the
// clock's origin is now, and user code sees the web platform, not the host (no Deno
// namespace, no bootstrap internals; deno_core reads `Deno.core` while it restores). The
// WebAssembly wrappers are installed here too: they keep the prototypes of the engine's
// WebAssembly constructors, and this engine makes those prototypes anew when it restores a
// snapshot, so prototypes kept from before it are stale copies: every `instanceof` check in
// the wrappers failed and exported memories went unguarded.
const FINISH_BOOT = SymbolFor("tern.finishBoot");
function finishBoot() {
  delete globalThis[FINISH_BOOT];
  op_tern_register_serve(serve);
  performance.setTimeOrigin();
  if (globalThis.WebAssembly) limitWebAssemblyMemory(globalThis.WebAssembly);
  delete globalThis.Deno;
  delete globalThis.__bootstrap;
}
ObjectDefineProperty(globalThis, FINISH_BOOT, { value: finishBoot, configurable: true });
ObjectDefineProperty(globalThis, SymbolFor("tern.bootstrapped"), value(true));
