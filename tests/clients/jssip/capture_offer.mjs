// Capture a real Chromium WebRTC offer for tests/vectors/sdp/chrome_offer_signalling.sdp.
//
// Headless Chromium loads a local page (served on 127.0.0.1, a secure context) that opens the
// fake audio device, adds its track to an RTCPeerConnection, calls createOffer() and
// setLocalDescription(), waits for ICE gathering to complete (JsSIP sends no trickle ICE, it
// waits the same way) and hands back pc.localDescription.sdp, which is written verbatim.
//
// Run from this folder after `npm ci` (playwright-core is a devDependency; it drives the
// system's Chromium and downloads nothing):
//
//   unshare -n sh -c 'ip link set lo up && node capture_offer.mjs'
//
// The network namespace holds loopback only, and --allow-loopback-in-peer-connection lets
// Chromium gather host candidates on it, so the vector carries 127.0.0.1/::1 candidates and no
// address of the capturing machine. Without unshare it still works, with the machine's
// addresses in the candidates. Set CHROMIUM to choose the browser binary (default: the first
// of chromium, chromium-browser, google-chrome found on PATH). Pass an output path as the first
// argument to write elsewhere.

import { createServer } from 'node:http';
import { accessSync, constants, writeFileSync } from 'node:fs';
import { delimiter, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const DEFAULT_OUT = fileURLToPath(
  new URL('../../vectors/sdp/chrome_offer_signalling.sdp', import.meta.url),
);
const ICE_GATHERING_TIMEOUT_MS = 10_000;
const BROWSER_NAMES = ['chromium', 'chromium-browser', 'google-chrome'];

const PAGE = `<!doctype html>
<html><head><meta charset="utf-8"><title>offer capture</title></head><body>
<script>
window.captureOffer = async (timeoutMs) => {
  const stream = await navigator.mediaDevices.getUserMedia({ audio: true, video: false });
  const pc = new RTCPeerConnection({ iceServers: [] });
  for (const track of stream.getTracks()) pc.addTrack(track, stream);
  const offer = await pc.createOffer();
  await pc.setLocalDescription(offer);
  await new Promise((resolve, reject) => {
    if (pc.iceGatheringState === 'complete') return resolve();
    const timer = setTimeout(() => reject(new Error('ICE gathering timed out')), timeoutMs);
    pc.addEventListener('icegatheringstatechange', () => {
      if (pc.iceGatheringState === 'complete') { clearTimeout(timer); resolve(); }
    });
  });
  const sdp = pc.localDescription.sdp;
  pc.close();
  stream.getTracks().forEach((t) => t.stop());
  return { sdp, userAgent: navigator.userAgent };
};
</script></body></html>`;

function findBrowser() {
  if (process.env.CHROMIUM) return process.env.CHROMIUM;
  for (const dir of (process.env.PATH || '').split(delimiter)) {
    for (const name of BROWSER_NAMES) {
      const candidate = join(dir, name);
      try {
        accessSync(candidate, constants.X_OK);
        return candidate;
      } catch {
        // not here; keep looking
      }
    }
  }
  throw new Error(`no Chromium found on PATH (${BROWSER_NAMES.join(', ')}); set CHROMIUM`);
}

async function main() {
  const out = process.argv[2] || DEFAULT_OUT;
  const server = createServer((req, res) => {
    res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
    res.end(PAGE);
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address();
  const browser = await chromium.launch({
    executablePath: findBrowser(),
    headless: true,
    args: [
      '--use-fake-device-for-media-stream',
      '--use-fake-ui-for-media-stream',
      '--allow-loopback-in-peer-connection',
    ],
  });
  try {
    const page = await browser.newPage();
    await page.goto(`http://127.0.0.1:${port}/`);
    const { sdp, userAgent } = await page.evaluate(
      (ms) => window.captureOffer(ms),
      ICE_GATHERING_TIMEOUT_MS,
    );
    writeFileSync(out, sdp);
    process.stderr.write(`captured ${sdp.length} bytes from ${userAgent}\nwrote ${out}\n`);
  } finally {
    await browser.close();
    server.close();
  }
}

main().catch((err) => {
  process.stderr.write(`capture failed: ${err.stack || err}\n`);
  process.exit(1);
});
