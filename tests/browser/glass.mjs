// Glass-to-glass latency in the browser: a page reads the test pattern's
// stamp from each decoded frame of a remote stream (requestVideoFrameCallback)
// and reports now - capture time. Used two ways by `benches/device.rs`:
//   node glass.mjs device <base> <roomId> <seconds>   Chromium subscribes to the device
//   node glass.mjs browser <base> <roomId> <seconds>  Chromium -> Chromium, the
//       publisher (its own Chromium instance) drawing the same pattern on a
//       canvas (captureStream, 640x480@30) and sending a tone, as the device
//       does (so both are lip-synced)
// Prints one JSON line: {frames, p50_ms, p99_ms, fps, received_p50_ms,
// received_p99_ms, video, audio}: capture -> shown (the frame callback),
// capture -> the frame's last packet received (its receiveTime), and
// the viewer's inbound-rtp getStats over the window:
// mean jitter-buffer delay and target, decode and processing time per frame,
// the spread of inter-frame delay, drops, freezes, NACKs and RTP jitter.
import { readFileSync } from 'node:fs';
import { launch, userSig, sleep } from './lib.mjs';

const [mode, base, roomId, seconds] = process.argv.slice(2);
const patternJs = readFileSync(new URL('./pattern.js', import.meta.url), 'utf8');
const browser = await launch();
// The publisher in its own Chromium, as a caller on another machine would
// be: one instance would draw and display on the same frame clock, which
// no real call has.
const publisherBrowser = mode === 'browser' ? await launch() : null;

async function page(userId, b = browser) {
  const p = await b.newPage();
  p.on('pageerror', (e) => console.error(`[${userId}] ${e.message}`));
  await p.goto(`${base}/seed.html`);
  await p.addScriptTag({ content: patternJs });
  return p;
}

async function join(p, userId, publishCanvas) {
  const sig = await userSig(base, userId);
  await p.evaluate(async ({ userId, sig, roomId, publishCanvas }) => {
    window.__lat = [];
    const c = TRTC.createClient({ mode: 'rtc', sdkAppId: 1400000000, userId, userSig: sig });
    window.c = c;
    // Keep the client's peer connections for getStats.
    window.__pcs = [];
    const newPeer = c._newPeer.bind(c);
    c._newPeer = () => { const pc = newPeer(); window.__pcs.push(pc); return pc; };
    c.on('stream-added', (e) => c.subscribe(e.stream));
    c.on('stream-subscribed', (e) => {
      e.stream.play('remoteStreamContainer');
      const measure = () => {
        const v = e.stream.getVideoElement();
        if (!v || !v.requestVideoFrameCallback) return setTimeout(measure, 50);
        const canvas = document.createElement('canvas');
        const ctx = canvas.getContext('2d', { willReadFrequently: true });
        const onFrame = (_, md) => {
          const now = Date.now() * 1000;
          // When the frame's last packet reached the browser (WebRTC sources
          // report it), on the same epoch clock as the stamp.
          const received = md && md.receiveTime ? (performance.timeOrigin + md.receiveTime) * 1000 : null;
          if (v.videoWidth) {
            const w = v.videoWidth, h = Math.ceil(40 * w / 640);
            canvas.width = w; canvas.height = h;
            ctx.drawImage(v, 0, 0, w, h, 0, 0, w, h);
            const s = CallboxPattern.read(ctx.getImageData(0, 0, w, h).data, w, w / 640);
            if (s) window.__lat.push({
              counter: s.counter, ms: (now - s.captureUs) / 1000, t: now,
              received_ms: received ? (received - s.captureUs) / 1000 : null,
            });
          }
          v.requestVideoFrameCallback(onFrame);
        };
        v.requestVideoFrameCallback(onFrame);
      };
      measure();
    });
    await c.join({ roomId: Number(roomId) });
    if (publishCanvas) {
      const canvas = document.createElement('canvas');
      canvas.width = 640; canvas.height = 480;
      const ctx = canvas.getContext('2d');
      let n = 0;
      setInterval(() => CallboxPattern.draw(ctx, 640, 480, ++n, Date.now() * 1000), 1000 / 30);
      const track = canvas.captureStream(30).getVideoTracks()[0];
      // Audio too, as the device sends: the receiver then synchronises video
      // to audio playout in both cases, so the two numbers compare.
      const ac = new AudioContext();
      const osc = ac.createOscillator();
      const dest = ac.createMediaStreamDestination();
      osc.frequency.value = 440;
      osc.connect(dest);
      osc.start();
      const s = TRTC.createStream({ userId, audio: false, video: false, videoSource: track, audioSource: dest.stream.getAudioTracks()[0] });
      await s.initialize();
      await c.publish(s);
    }
  }, { userId, sig, roomId, publishCanvas });
}

const viewer = await page('g2g-viewer');
if (mode === 'browser') {
  const pub = await page('g2g-publisher', publisherBrowser);
  await join(pub, 'g2g-publisher', true);
}
await join(viewer, 'g2g-viewer', false);
await sleep(3000); // warm-up: keyframe, bitrate ramp
// The viewer's inbound-rtp stats per kind, summed over its connections.
const inbound = () => viewer.evaluate(async () => {
  const out = {};
  for (const pc of window.__pcs) {
    for (const r of (await pc.getStats()).values()) {
      if (r.type !== 'inbound-rtp') continue;
      const o = (out[r.kind] ||= {});
      for (const [k, v] of Object.entries(r)) if (typeof v === 'number') o[k] = (o[k] || 0) + v;
    }
  }
  return out;
});
await viewer.evaluate(() => { window.__lat = []; });
const before = await inbound();
await sleep(Number(seconds) * 1000);
const after = await inbound();
const lat = await viewer.evaluate(() => window.__lat);
await browser.close();
if (publisherBrowser) await publisherBrowser.close();
const ms = lat.map((l) => l.ms).sort((a, b) => a - b);
const pct = (p, v = ms) => (v.length ? v[Math.min(v.length - 1, Math.round((v.length - 1) * p))] : null);
const rx = lat.map((l) => l.received_ms).filter((x) => x != null).sort((a, b) => a - b);
const span = lat.length > 1 ? (lat[lat.length - 1].t - lat[0].t) / 1e6 : 0;
// What the window added, per kind: the browser's own account of where time went.
function window_stats(kind) {
  const a = after[kind] || {}, b = before[kind] || {};
  const d = (k) => (a[k] || 0) - (b[k] || 0);
  const per = (k, n) => (d(n) > 0 ? (1000 * d(k)) / d(n) : null);
  const frames = d('framesDecoded');
  const ifd = d('totalInterFrameDelay'), ifd2 = d('totalSquaredInterFrameDelay');
  const intervals = Math.max(frames - 1, 1);
  return {
    jitter_buffer_ms: per('jitterBufferDelay', 'jitterBufferEmittedCount'),
    jitter_buffer_target_ms: per('jitterBufferTargetDelay', 'jitterBufferEmittedCount'),
    jitter_buffer_minimum_ms: per('jitterBufferMinimumDelay', 'jitterBufferEmittedCount'),
    decode_ms: per('totalDecodeTime', 'framesDecoded'),
    processing_ms: per('totalProcessingDelay', 'framesDecoded'),
    assembly_ms: per('totalAssemblyTime', 'framesAssembledFromMultiplePackets'),
    inter_frame_sd_ms: frames > 1 ? 1000 * Math.sqrt(Math.max(ifd2 / intervals - (ifd / intervals) ** 2, 0)) : null,
    frames_decoded: frames,
    frames_dropped: d('framesDropped'),
    freezes: d('freezeCount'),
    nacks: d('nackCount'),
    packets_lost: d('packetsLost'),
    rtp_jitter_ms: a.jitter != null ? 1000 * a.jitter : null,
  };
}
console.log(JSON.stringify({
  frames: ms.length, p50_ms: pct(0.5), p99_ms: pct(0.99), fps: span ? (lat.length - 1) / span : 0,
  received_p50_ms: pct(0.5, rx), received_p99_ms: pct(0.99, rx),
  video: window_stats('video'), audio: window_stats('audio'),
}));
