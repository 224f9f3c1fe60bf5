// expect: 500 response_body_too_large
// limit: response_body_mib = 1
export default { fetch() { return new Response(new Uint8Array(4 << 20)); } };
