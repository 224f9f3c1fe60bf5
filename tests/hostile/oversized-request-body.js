// expect: 413 request_body_too_large
// limit: request_body_mib = 1
export default { async fetch(req) { return new Response(String((await req.arrayBuffer()).byteLength)); } };
