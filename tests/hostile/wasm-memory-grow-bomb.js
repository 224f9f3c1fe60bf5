// expect: 200 grew to 2034 pages
// A module whose memory has no maximum grows 16 pages at a time until memory.grow fails:
// its memory is clamped to the function's 128 MiB.
const bytes = new Uint8Array([0,0x61,0x73,0x6d,1,0,0,0, 1,5,1,0x60,0,1,0x7f, 3,2,1,0, 5,3,1,0,1, 7,8,1,4,0x67,0x72,0x6f,0x77,0,0,
  0x0a,0x17,1,0x15,0, 2,0x40, 3,0x40, 0x41,0x10, 0x40,0, 0x41,0x7f, 0x46, 0x0d,1, 0x0c,0, 0x0b, 0x0b, 0x3f,0, 0x0b]);
const module = new WebAssembly.Module(bytes);
export default { fetch() {
  const pages = new WebAssembly.Instance(module, {}).exports.grow();
  return new Response(`grew to ${pages} pages`);
} };
