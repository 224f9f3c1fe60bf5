// `cloudflare:workers`: what Workers code imports from its runtime. Evaluated only when a
// function imports it (or serves a class); deno_core turns the object returned below into
// the module's named exports.
//
// - `env`: the function's env (its vars and secrets), the very object every handler gets,
//   readable at the module's top level as on Workers.
// - `waitUntil(promise)`: `ctx.waitUntil` without the ctx.
// - `WorkerEntrypoint`: a default export extending it is served as on Workers, one instance
//   per request with `this.env` and `this.ctx`, its `fetch(request)` called.
// - `DurableObject`, `WorkflowEntrypoint`, `RpcTarget`, `RpcStub`: Tern runs none of these.
//   The classes exist so that a module declaring a Durable Object beside its fetch handler
//   loads and serves; serving one, or making an RPC stub, says that Tern does not provide it.
(function () {
const { internals, primordials } = __bootstrap;
const { TypeError } = primordials;
// Set by 10_handler.js, which owns the env and the request context.
const { functionEnv, waitUntil } = internals.ternWorkers;

class WorkerEntrypoint {
  constructor(ctx, env) {
    this.ctx = ctx;
    this.env = env;
  }
}

class DurableObject {
  constructor(ctx, env) {
    this.ctx = ctx;
    this.env = env;
  }
}

class WorkflowEntrypoint {
  constructor(ctx, env) {
    this.ctx = ctx;
    this.env = env;
  }
}

class RpcTarget {}

class RpcStub {
  constructor() {
    throw new TypeError("RpcStub: Workers RPC is not provided by Tern");
  }
}

return {
  env: functionEnv(),
  waitUntil,
  WorkerEntrypoint,
  DurableObject,
  WorkflowEntrypoint,
  RpcTarget,
  RpcStub,
};
})();
