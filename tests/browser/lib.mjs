// Shared by the browser end-to-end tests: start `callbox demo` (room service
// and, optionally, a synthetic device), launch Debian's Chromium headless
// with fake camera and microphone, run the seed page's call flow.
import { spawn } from 'node:child_process';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

export const SDK_APP_ID = 1400000000;
export const ADMIN_KEY = 'local-admin-key-0123456789abcdef';

export function chromiumPath() {
  return process.env.CHROMIUM || '/usr/lib/chromium/chromium';
}

/** Run `callbox demo`; resolves once its room service answers /health. */
export async function startDemo({ port, roomId, wav, screen, device = true }) {
  const bin = process.env.CALLBOX_BIN;
  if (!bin) throw new Error('CALLBOX_BIN is not set');
  const args = ['demo', '--port', String(port), '--room-id', String(roomId)];
  if (wav) args.push('--wav', wav);
  if (screen) args.push('--screen', screen);
  if (!device) args.push('--no-device');
  const child = spawn(bin, args, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, RUST_LOG: process.env.RUST_LOG || 'info,str0m=warn,webrtc=warn,rtc=warn' } });
  const log = [];
  child.stdout.on('data', (d) => log.push(d.toString()));
  child.stderr.on('data', (d) => log.push(d.toString()));
  const base = `http://127.0.0.1:${port}`;
  for (let i = 0; i < 100; i++) {
    if (child.exitCode !== null) throw new Error(`callbox demo exited ${child.exitCode}:\n${log.join('')}`);
    try {
      if ((await fetch(`${base}/health`)).ok) break;
    } catch (e) {
      /* not up yet */
    }
    await sleep(100);
  }
  return {
    base,
    log,
    async stop() {
      if (child.exitCode !== null) return child.exitCode;
      child.kill('SIGTERM');
      return new Promise((resolve) => child.on('exit', (code) => resolve(code)));
    },
  };
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

export async function userSig(base, userId) {
  const r = await fetch(`${base}/api/dev/usersig`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ sdkAppId: SDK_APP_ID, userId }) });
  if (!r.ok) throw new Error(`dev usersig: ${r.status}`);
  return (await r.json()).userSig;
}

export async function admin(base, action, body) {
  const r = await fetch(`${base}/api/admin/${action}`, { method: 'POST', headers: { 'content-type': 'application/json', authorization: `Bearer ${ADMIN_KEY}` }, body: JSON.stringify(body) });
  return { status: r.status, body: await r.json() };
}

export async function launch({ autoplay = true } = {}) {
  const args = [
    '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking', '--disable-component-update',
    '--disable-sync', '--disable-quic', '--use-fake-device-for-media-stream', '--use-fake-ui-for-media-stream',
    '--allow-loopback-in-peer-connection',
  ];
  args.push(autoplay ? '--autoplay-policy=no-user-gesture-required' : '--autoplay-policy=document-user-activation-required');
  return chromium.launch({ executablePath: chromiumPath(), headless: true, args });
}

/** Open the seed page, fill its inputs, click startCall (the guide's flow). */
export async function seedCall(browser, base, { roomId, userId }) {
  const page = await browser.newPage();
  page.on('console', (m) => { if (m.type() === 'error') console.log(`[${userId} console] ${m.text()}`); });
  page.on('pageerror', (e) => console.log(`[${userId} pageerror] ${e.message}`));
  await page.goto(`${base}/seed.html`);
  // Events the tests look at, recorded from the page's own client.
  await page.evaluate(() => { window.__events = []; });
  await page.fill('#roomId', String(roomId));
  await page.fill('#userId', userId);
  await page.fill('#userSig', await userSig(base, userId));
  await page.click('#startCall');
  await page.waitForFunction(() => typeof client !== 'undefined' && client && client._room && client._local, null, { timeout: 20000 });
  await page.evaluate(() => {
    for (const ev of ['stream-added', 'stream-removed', 'stream-updated', 'stream-subscribed', 'peer-join', 'peer-leave', 'mute-audio', 'unmute-audio', 'mute-video', 'unmute-video', 'client-banned', 'connection-state-changed', 'error']) {
      client.on(ev, (e) => window.__events.push({ type: ev, userId: e && (e.userId || (e.stream && e.stream.getUserId())), reason: e && e.reason, state: e && e.state, code: e && e.getCode && e.getCode() }));
    }
  });
  return page;
}

/** Remote video/audio as the page plays them. */
export async function remoteMedia(page) {
  return page.evaluate(async () => {
    const v = document.querySelector('#remoteStreamContainer video');
    const video = await client.getRemoteVideoStats();
    const audio = await client.getRemoteAudioStats();
    const transport = await client.getTransportStats();
    return { videoWidth: v ? v.videoWidth : 0, videoHeight: v ? v.videoHeight : 0, video, audio, transport };
  });
}

export async function waitUntil(what, fn, timeoutMs = 15000) {
  const end = Date.now() + timeoutMs;
  let last;
  while (Date.now() < end) {
    last = await fn();
    if (last && last.ok) return last;
    await sleep(250);
  }
  throw new Error(`${what}: not within ${timeoutMs} ms; last: ${JSON.stringify(last)}`);
}

/** RMS and peak of a 16-bit mono WAV file. */
export function wavLevels(path) {
  const b = readFileSync(path);
  let off = 12;
  while (off + 8 <= b.length) {
    const id = b.toString('ascii', off, off + 4);
    const len = b.readUInt32LE(off + 4);
    if (id === 'data') {
      const n = Math.floor(Math.min(len, b.length - off - 8) / 2);
      let sum = 0;
      let peak = 0;
      for (let i = 0; i < n; i++) {
        const s = b.readInt16LE(off + 8 + 2 * i);
        sum += s * s;
        peak = Math.max(peak, Math.abs(s));
      }
      return { samples: n, rms: n ? Math.sqrt(sum / n) / 32768 : 0, peak };
    }
    off += 8 + len;
  }
  return { samples: 0, rms: 0, peak: 0 };
}

/** Where a script leaves screenshots, recordings and its failure summary (created on first use). */
export function artifactDir() {
  const dir = process.env.ARTIFACTS || 'target/browser-artifacts';
  mkdirSync(dir, { recursive: true });
  return dir;
}
const failures = [];
const writeFailures = () => writeFileSync(join(artifactDir(), 'failures.txt'), failures.join('\n') + '\n');

/** Run `body`, print one PASS/FAIL line per check; failures are kept for `finish`. */
export async function scenario(name, body) {
  const t0 = Date.now();
  try {
    await body();
    console.log(`PASS ${name} (${((Date.now() - t0) / 1000).toFixed(1)} s)`);
    return true;
  } catch (e) {
    console.log(`FAIL ${name}: ${e && e.stack}`);
    failures.push(`${name} (after ${((Date.now() - t0) / 1000).toFixed(1)} s): ${e && e.message}`);
    return false;
  }
}

/**
 * End the script: on failure print the demo's log tail, then the failures
 * last (so a truncated CI log still names them), and write them to
 * failures.txt, which tests/browser.rs puts in its panic message.
 */
export function finish(demo, tailLines = 40) {
  if (failures.length) {
    console.log(demo.log.join('').split('\n').slice(-tailLines).join('\n'));
    for (const f of failures) console.log(`FAILED: ${f}`);
    writeFailures();
  }
  process.exit(failures.length ? 1 : 0);
}

// A throw outside any scenario is a failure too, reported the same way.
process.on('unhandledRejection', (e) => {
  failures.push(`outside a scenario: ${e && e.stack}`);
  writeFailures();
  console.log(`FAILED: outside a scenario: ${e && e.stack}`);
  process.exit(1);
});

// A YUV4MPEG2 file as the device's screen writes it: size and frames (luma planes).
export function y4mFrames(path) {
  const data = readFileSync(path);
  const end = data.indexOf(0x0a);
  const header = data.subarray(0, end).toString();
  const w = Number(/ W(\d+)/.exec(header)[1]);
  const h = Number(/ H(\d+)/.exec(header)[1]);
  const size = (w * h * 3) / 2;
  const frames = [];
  for (let at = end + 1; at + 6 + size <= data.length; at += 6 + size) {
    frames.push(data.subarray(at + 6, at + 6 + w * h));
  }
  return { w, h, frames };
}
