// expect: 200 thenable everywhere
export default {
  fetch() {
    Object.defineProperty(Object.prototype, 'then', { get() { for (;;) {} }, configurable: true });
    return new Response('thenable everywhere');
  },
};
