// expect: 200 answered
export default {
  fetch() {
    setInterval(() => { const end = Date.now() + 20; while (Date.now() < end) {} }, 0);
    return new Response('answered');
  },
};
