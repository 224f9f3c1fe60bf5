// expect: 200 refused: RangeError at 1985 pages
// A module exports its memory (no maximum) and JS grows it, 64 pages at a time, past the
// function's 128 MiB (2,048 pages). The engine raised an exported memory's maximum to fit
// any grow from JS: this reached 4 GiB. Now 1 + 31 x 64 pages is as far as it gets.
const bytes = new Uint8Array([0,0x61,0x73,0x6d,1,0,0,0, 5,3,1,0,1, 7,7,1,3,0x6d,0x65,0x6d,2,0]);
export default { async fetch() {
  const { instance } = await WebAssembly.instantiate(bytes);
  const memory = instance.exports.mem;
  try {
    for (;;) memory.grow(64);
  } catch (e) {
    return new Response(`refused: ${e.name} at ${memory.grow(0)} pages`);
  }
} };
