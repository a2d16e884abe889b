// Device <-> Chromium: the seed page calls a callbox device (synthetic
// camera and tone). The browser must play the device's video at the
// configured size and its audio; the device must hear the browser's fake
// microphone (energy in its WAV sink) and show its fake camera on its
// screen (the YUV4MPEG2 sink): moving pictures, not the idle text.
import { join } from 'node:path';
import { artifactDir, finish, launch, remoteMedia, scenario, seedCall, startDemo, waitUntil, wavLevels, sleep, y4mFrames } from './lib.mjs';

const out = artifactDir();
const wav = join(out, 'device-speaker.wav');
const screen = join(out, 'device-screen.y4m');
const roomId = 4321;
const demo = await startDemo({ port: 18080, roomId, wav, screen });
const browser = await launch();
try {
  const page = await seedCall(browser, demo.base, { roomId, userId: 'browser-1' });
  await scenario('browser plays the device video at 640x480 and its audio', async () => {
    const first = await waitUntil('device video playing', async () => {
      const m = await remoteMedia(page);
      const v = m.video['callbox-device'];
      return { ok: m.videoWidth === 640 && v && v.framesDecoded > 10, ...m };
    });
    await sleep(2000);
    const later = await remoteMedia(page);
    const f0 = first.video['callbox-device'].framesDecoded;
    const f1 = later.video['callbox-device'].framesDecoded;
    const a0 = first.audio['callbox-device'];
    const a1 = later.audio['callbox-device'];
    console.log(`framesDecoded ${f0} -> ${f1} in 2 s; video ${later.videoWidth}x${later.videoHeight}; audio bytes ${a0.bytesReceived} -> ${a1.bytesReceived}, level ${a1.audioLevel}; ICE ${later.transport.localCandidate} <-> ${later.transport.remoteCandidate}`);
    if (f1 - f0 < 30) throw new Error(`only ${f1 - f0} frames decoded in 2 s`);
    if (later.videoHeight !== 480) throw new Error(`videoHeight ${later.videoHeight}`);
    if (!(a1.bytesReceived > a0.bytesReceived)) throw new Error('no audio arriving');
    if (!(a1.audioLevel > 0.01)) throw new Error(`audio level ${a1.audioLevel}: the tone is not heard`);
    if (!/^127\.0\.0\.1:/.test(later.transport.remoteCandidate || '')) throw new Error(`ICE not on loopback: ${later.transport.remoteCandidate}`);
  });
  await scenario('browser shows the device video as soon as it is decoded', async () => {
    // The device sends playout-delay 0/0 (video.playout = "immediate"),
    // through the room: Chromium then holds none of its frames in the
    // jitter buffer (a canvas publisher's wait about 8 ms per frame here).
    const held = () => page.evaluate(async () => {
      for (const s of client._remotes.values()) {
        if (s.getUserId() !== 'callbox-device') continue;
        for (const r of (await s._pc.getStats()).values()) {
          if (r.type === 'inbound-rtp' && r.kind === 'video') return { delay: r.jitterBufferDelay, frames: r.jitterBufferEmittedCount };
        }
      }
      return null;
    });
    const a = await held();
    await sleep(2000);
    const b = await held();
    if (!a || !b) throw new Error('no inbound video stats for the device');
    const frames = b.frames - a.frames;
    const perFrameMs = (b.delay - a.delay) / frames * 1000;
    console.log(`device video held ${perFrameMs.toFixed(2)} ms per frame in the jitter buffer over ${frames} frames`);
    if (frames < 30) throw new Error(`only ${frames} frames left the jitter buffer in 2 s`);
    if (!(perFrameMs < 3)) throw new Error(`Chromium holds the device's frames ${perFrameMs.toFixed(2)} ms each: playout-delay not applied`);
  });
  await page.screenshot({ path: join(out, 'device-call.png') });
  await scenario('device shows the browser camera on its screen', async () => {
    const mean = (f) => f.reduce((a, v) => a + v, 0) / f.length;
    // The idle picture is black (luma 16) but for its text.
    const black = (f) => f.reduce((n, v) => n + (v === 16 ? 1 : 0), 0) / f.length;
    const differ = (a, b) => a.reduce((n, v, i) => n + (Math.abs(v - b[i]) > 24 ? 1 : 0), 0) / a.length;
    const shown = await waitUntil('the browser on the device screen', async () => {
      const { w, h, frames } = y4mFrames(screen);
      const last = frames[frames.length - 1];
      return { ok: frames.length > 20 && last && black(last) < 0.5, w, h, n: frames.length };
    });
    await sleep(1000);
    const { frames } = y4mFrames(screen);
    // One second apart at 15 fps: the fake camera's picture has moved.
    const [a, b] = [frames[frames.length - 16], frames[frames.length - 1]];
    const moved = differ(a, b);
    console.log(`device screen ${shown.w}x${shown.h}: ${frames.length} frames, mean luma ${mean(b).toFixed(0)}, ${(black(b) * 100).toFixed(1)} % black, ${(moved * 100).toFixed(1)} % of pixels changed in 1 s`);
    if (!(black(b) < 0.5)) throw new Error(`the device screen went back to idle (${black(b)} black)`);
    if (!(moved > 0.001)) throw new Error(`the device screen is frozen (${moved})`);
  });
  await sleep(1500);
} finally {
  await browser.close();
  const code = await demo.stop();
  await scenario('callbox demo exits cleanly on SIGTERM', async () => {
    if (code !== 0) throw new Error(`callbox demo exited with ${code}`);
  });
}
await scenario('device hears the browser microphone', async () => {
  const l = wavLevels(wav);
  console.log(`device speaker WAV: ${(l.samples / 48000).toFixed(1)} s, rms ${l.rms.toFixed(4)}, peak ${l.peak}`);
  if (l.samples < 48000) throw new Error('less than a second recorded');
  if (l.peak < 1000) throw new Error('silence: the browser audio did not reach the device speaker');
});
finish(demo, 60);
