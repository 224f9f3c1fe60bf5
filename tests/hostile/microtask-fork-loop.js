// expect: 503 cpu_limit_exceeded|wall_time_exceeded
// limit: wall_ms = 3000
// A microtask chain that forks: each job queues two. On quickjs termination interrupts one
// job at a time while the queue grows, so the isolate is declared stuck, its thread
// quarantined (idle priority), and the request ends at its wall time. With isolate hosts
// the host holding it is replaced (tests/hosts.rs); here the canary must not notice.
export default { fetch() {
  const spin = () => { Promise.resolve().then(spin); Promise.resolve().then(spin); };
  spin();
  return new Promise(() => {});
} };
