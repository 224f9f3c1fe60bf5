// expect: 200 polluted my own isolate
export default {
  fetch() {
    globalThis.__pwned = 'globalThis';
    Object.prototype.__pwned = 'Object.prototype';
    Array.prototype.__pwned = 'Array.prototype';
    String.prototype.__pwned = 'String.prototype';
    Response.prototype.__pwned = 'Response.prototype';
    JSON.stringify = () => 'pwned';
    Math.random = () => 4;
    return new Response('polluted my own isolate');
  },
};
