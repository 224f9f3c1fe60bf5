// expect: 503 cpu_limit_exceeded|wall_time_exceeded
// limit: wall_ms = 3000
// On quickjs a microtask chain may swallow termination (v8x drains jobs past it): then the
// isolate is quarantined and the request ends at its wall time.
export default { fetch() { const spin = () => { Promise.resolve().then(spin); }; spin(); return new Promise(() => {}); } };
