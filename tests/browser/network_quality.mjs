// TRTC's network-quality event in Chromium: every 2 s in a call, graded by
// the room. On a clean network both directions read excellent or good;
// with 20 % of the UDP sent to the room's media port dropped (iptables
// `statistic`, in the test's own network namespace), the uplink reads bad
// or worse, the demo device logs W_NETWORK_BAD for its own uplink, and both
// recover when the rule comes off.
import { execFileSync } from 'node:child_process';
import { finish, launch, scenario, seedCall, sleep, startDemo, waitUntil } from './lib.mjs';

const roomId = 4323;
const demo = await startDemo({ port: 18082, roomId });
const udp = (demo.log.join('').match(/media udp [\d.]+:(\d+)/) || [])[1];
const rule = (op) => ['-' + op, 'INPUT', '-p', 'udp', '--dport', udp, '-m', 'statistic', '--mode', 'random', '--probability', '0.2', '-j', 'DROP'];
let canDrop = false;
try {
  if (!udp) throw new Error(`no media port in the demo's output:\n${demo.log.join('')}`);
  execFileSync('iptables', rule('A'));
  execFileSync('iptables', rule('D'));
  canDrop = true;
} catch (e) {
  console.log(`network-quality: SKIPPED: cannot drop UDP here (${e.message.split('\n')[0]})`);
}
if (canDrop) {
  const browser = await launch();
  try {
    const page = await seedCall(browser, demo.base, { roomId, userId: 'browser-nq' });
    await page.evaluate(() => {
      window.__quality = [];
      client.on('network-quality', (e) => window.__quality.push({ at: Date.now(), ...e }));
    });
    const latest = () => page.evaluate(() => window.__quality[window.__quality.length - 1] || null);
    const waitQuality = (what, ok) => waitUntil(what, async () => {
      const q = await latest();
      return { ok: !!q && ok(q), ...q };
    });
    let clean;
    await scenario('network-quality on a clean network: excellent or good both ways, every 2 s', async () => {
      clean = await waitQuality('clean grades', (q) => q.uplinkNetworkQuality >= 1 && q.uplinkNetworkQuality <= 2 && q.downlinkNetworkQuality >= 1 && q.downlinkNetworkQuality <= 2);
      const n0 = await page.evaluate(() => window.__quality.length);
      await sleep(4200);
      const n1 = await page.evaluate(() => window.__quality.length);
      console.log(`network-quality: clean: up ${clean.uplinkNetworkQuality} down ${clean.downlinkNetworkQuality}, rtt ${clean.uplinkRTT} ms, loss ${clean.uplinkLoss}/${clean.downlinkLoss} %; ${n1 - n0} events in 4.2 s`);
      if (n1 - n0 < 2 || n1 - n0 > 3) throw new Error(`${n1 - n0} events in 4.2 s, not one every 2 s`);
    });
    await scenario('20 % of UDP to the room dropped: the uplink reads bad or worse, then recovers', async () => {
      const t0 = Date.now();
      execFileSync('iptables', rule('A'));
      let bad;
      let full;
      try {
        bad = await waitQuality('bad uplink', (q) => q.at > t0 && q.uplinkNetworkQuality >= 4);
        // Two intervals wholly inside the loss; the worse one's figure.
        await waitQuality('two whole lossy intervals', (q) => q.at > t0 + 4100);
        full = await page.evaluate((t) => window.__quality.filter((q) => q.at > t + 2100)
          .reduce((a, q) => (q.uplinkLoss > a.uplinkLoss ? q : a)), t0);
      } finally {
        execFileSync('iptables', rule('D'));
      }
      const t1 = Date.now();
      const back = await waitQuality('recovered uplink', (q) => q.at > t1 && q.uplinkNetworkQuality <= 2);
      console.log(`network-quality: 20 % loss: up ${bad.uplinkNetworkQuality} after ${((bad.at - t0) / 1000).toFixed(1)} s; the worse whole interval: up ${full.uplinkNetworkQuality} (${full.uplinkLoss} % loss), down ${full.downlinkNetworkQuality} (${full.downlinkLoss} %, the device's uplink loss passed on); back to ${back.uplinkNetworkQuality} ${((back.at - t1) / 1000).toFixed(1)} s after`);
      // Chromium retransmits lost video (RTX), and a retransmission counts as
      // arrived: its figure is below the drop rate, never near zero.
      if (full.uplinkLoss < 5 || full.uplinkLoss > 35) throw new Error(`uplink loss ${full.uplinkLoss} % under a 20 % drop`);
      await waitUntil('the device logs its bad uplink, then its recovery', async () => {
        const log = demo.log.join('');
        return { ok: /W_NETWORK_BAD network quality: uplink [4-6][^\n]*\n[^]*network quality: [^\n]*recovered/.test(log) };
      }, 6000);
    });
  } finally {
    await browser.close();
  }
}
await demo.stop();
finish(demo, 60);
