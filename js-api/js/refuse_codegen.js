// Run once in a function's isolate before its modules, unless its tern.toml says
// `allow_eval = true`: code generation from strings is refused, as on Workers.
//
// `eval`, `Function` and the constructors of async, generator and async generator functions
// (reachable through any function's `.constructor`) are replaced by functions that throw an
// EvalError; each replacement keeps the original `prototype`, so `f instanceof Function`
// and friends keep working. Engines with a native switch (V8) refuse it there as well.
(() => {
  const refuse = (what) => {
    throw new EvalError(
      `Code generation from strings is disallowed (${what}); set allow_eval = true in tern.toml to allow it`,
    );
  };
  const lock = (Original, what) => {
    const Refused = function () {
      refuse(what);
    };
    Object.defineProperty(Refused, "name", { value: Original.name });
    Object.defineProperty(Refused, "prototype", { value: Original.prototype, writable: false });
    Object.setPrototypeOf(Refused, Object.getPrototypeOf(Original));
    Object.defineProperty(Original.prototype, "constructor", {
      value: Refused,
      writable: true,
      configurable: true,
    });
    return Refused;
  };
  lock(Object.getPrototypeOf(async function () {}).constructor, "AsyncFunction");
  lock(Object.getPrototypeOf(function* () {}).constructor, "GeneratorFunction");
  lock(Object.getPrototypeOf(async function* () {}).constructor, "AsyncGeneratorFunction");
  const RefusedFunction = lock(Function, "new Function");
  Object.defineProperty(globalThis, "Function", { value: RefusedFunction, writable: true, configurable: true });
  const refusedEval = function eval() {
    refuse("eval");
  };
  Object.defineProperty(globalThis, "eval", { value: refusedEval, writable: true, configurable: true });
})();
