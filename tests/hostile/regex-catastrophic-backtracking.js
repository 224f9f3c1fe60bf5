// expect: 503 cpu_limit_exceeded
export default { fetch() { return new Response(String(/^(a+)+$/.test('a'.repeat(64) + '!'))); } };
