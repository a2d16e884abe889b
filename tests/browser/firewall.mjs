// A firewall that drops UDP to the room's media port: Chromium and the
// demo device still call each other, over ICE-TCP to the room's passive
// TCP candidate. Needs iptables in the test's network namespace (root, as
// CI runs); without it the scenario says so and is skipped.
import { execFileSync } from 'node:child_process';
import { finish, launch, remoteMedia, scenario, seedCall, startDemo, waitUntil } from './lib.mjs';

const roomId = 4322;
const demo = await startDemo({ port: 18081, roomId });
const udp = (demo.log.join('').match(/media udp [\d.]+:(\d+)/) || [])[1];
let blocked = false;
try {
  if (!udp) throw new Error(`no media port in the demo's output:\n${demo.log.join('')}`);
  execFileSync('iptables', ['-A', 'INPUT', '-p', 'udp', '--dport', udp, '-j', 'DROP']);
  blocked = true;
} catch (e) {
  console.log(`firewall: SKIPPED: cannot drop UDP here (${e.message.split('\n')[0]})`);
}
if (blocked) {
  const browser = await launch();
  try {
    const page = await seedCall(browser, demo.base, { roomId, userId: 'browser-fw' });
    await scenario('UDP to the room dropped: Chromium plays the device over ICE-TCP', async () => {
      const m = await waitUntil('device video over TCP', async () => {
        const r = await remoteMedia(page);
        const v = r.video['callbox-device'];
        return { ok: r.videoWidth === 640 && v && v.framesDecoded > 10 && r.transport.path, ...r };
      });
      const a = m.audio['callbox-device'];
      console.log(`firewall: media udp ${udp} dropped; Chromium path ${m.transport.path} (${m.transport.localCandidate} <-> ${m.transport.remoteCandidate}), ${m.video['callbox-device'].framesDecoded} frames, audio bytes ${a && a.bytesReceived}`);
      if (!/\/tcp$/.test(m.transport.path)) throw new Error(`media not over TCP: ${m.transport.path}`);
      if (!(a && a.bytesReceived > 1000)) throw new Error('no audio over TCP');
    });
  } finally {
    await browser.close();
  }
}
await demo.stop();
finish(demo, 60);
