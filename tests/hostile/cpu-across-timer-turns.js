// expect: 503 cpu_limit_exceeded
export default {
  fetch() {
    // Each turn burns a little and yields; together they pass the per-request budget.
    return new Promise(() => {
      const burn = () => { const end = Date.now() + 5; while (Date.now() < end) {} setTimeout(burn, 0); };
      burn();
    });
  },
};
