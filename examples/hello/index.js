// The smallest function: answers every request with `hello`.
export default {
  fetch() {
    return new Response("hello", { headers: { "x-hello": "world" } });
  },
};
