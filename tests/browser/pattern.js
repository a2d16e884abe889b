// The test pattern's stamp block in the browser, bit for bit the layout of
// src/device/pattern.rs: 26x4 cells of 8x8 px in the top-left corner, 104
// bits = counter (32) + capture time in µs since the epoch (64) + check (8).
(function () {
  const CELL = 8, COLS = 26, ROWS = 4, BITS = COLS * ROWS;
  function check(bytes) {
    let c = 0x5a;
    for (let i = 0; i < 12; i++) c = (((c << 3) | (c >> 5)) & 0xff) ^ bytes[i];
    return c;
  }
  function toBytes(counter, captureUs) {
    const b = new Uint8Array(13);
    const v = new DataView(b.buffer);
    v.setUint32(0, counter >>> 0, true);
    v.setBigUint64(4, BigInt(captureUs), true);
    b[12] = check(b);
    return b;
  }
  /** Draw a frame: moving bars, then the stamp block. */
  function draw(ctx, w, h, counter, captureUs) {
    const colors = ['#fff', '#ff0', '#0ff', '#0f0', '#f0f', '#f00', '#00f', '#000'];
    const barW = Math.ceil(w / 8);
    const shift = (counter * 4) % w;
    for (let x = -barW; x < w + barW; x += barW) {
      const idx = Math.floor((x + shift) / barW);
      ctx.fillStyle = colors[((idx % 8) + 8) % 8];
      ctx.fillRect(x - (shift % barW), 0, barW, h);
    }
    const b = toBytes(counter, captureUs);
    for (let i = 0; i < BITS; i++) {
      ctx.fillStyle = (b[i >> 3] >> (i & 7)) & 1 ? '#fff' : '#000';
      ctx.fillRect((i % COLS) * CELL, Math.floor(i / COLS) * CELL, CELL, CELL);
    }
  }
  /** Read the stamp from RGBA pixels of a frame `w` px wide, scaled by `scale`
      (decoded width / drawn width). Returns {counter, captureUs} or null. */
  function read(rgba, w, scale) {
    const b = new Uint8Array(13);
    for (let i = 0; i < BITS; i++) {
      const cx = ((i % COLS) * CELL + CELL / 2) * scale;
      const cy = (Math.floor(i / COLS) * CELL + CELL / 2) * scale;
      const o = (Math.round(cy) * w + Math.round(cx)) * 4;
      const luma = 0.299 * rgba[o] + 0.587 * rgba[o + 1] + 0.114 * rgba[o + 2];
      if (luma > 128) b[i >> 3] |= 1 << (i & 7);
    }
    if (check(b) !== b[12]) return null;
    const v = new DataView(b.buffer);
    return { counter: v.getUint32(0, true), captureUs: Number(v.getBigUint64(4, true)) };
  }
  const api = { CELL, COLS, ROWS, draw, read };
  if (typeof module === 'object' && module.exports) module.exports = api;
  else globalThis.CallboxPattern = api;
})();
