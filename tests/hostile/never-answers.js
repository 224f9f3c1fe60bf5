// expect: 503 wall_time_exceeded
// limit: wall_ms = 300
export default { fetch() { return new Promise(() => {}); } };
