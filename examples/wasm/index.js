// Imports a .wasm file as a compiled WebAssembly.Module (as in Workers), instantiates it
// once per isolate and calls it: GET /?a=2&b=40 answers 42.
import addModule from "./add.wasm";

const { exports } = new WebAssembly.Instance(addModule, {});

export default {
  fetch(request) {
    const params = new URL(request.url).searchParams;
    const a = Number.parseInt(params.get("a") ?? "0", 10);
    const b = Number.parseInt(params.get("b") ?? "0", 10);
    if (!Number.isSafeInteger(a) || !Number.isSafeInteger(b)) {
      return Response.json({ error: "a and b must be integers" }, { status: 400 });
    }
    return Response.json({ a, b, sum: exports.add(a, b) });
  },
};
