// Headless Chromium running the SIP.js webphone page (index.html + phone.js), driven by JSON
// lines, for the gateway's end-to-end tests. Same protocol style as ../jssip/driver.mjs:
//
//   stdin:  one JSON command per line, {"cmd": "...", ...}
//   stdout: one JSON event per line, {"seq": N, "event": "...", ...}; seq increases by one per event
//   stderr: logs
//
// Media is REAL: Chromium's own WebRTC stack, with its fake capture device playing the WAV
// file given to `start` as the microphone.
//
// Commands:
//   start  {page_url, chromium, user_data_dir, fake_audio, artifacts_dir, extra_args?}
//          launch Chromium (playwright-core, executablePath = chromium: never a downloaded
//          browser) with a fresh profile in user_data_dir, open page_url, wait for window.phone.
//          -> started {chromium, user_agent, sipjs: {package, library}}
//   call   {id, method, args}  window.phone[method](...args) -> result {id, ok, value | error}
//   events {id}                window.phoneEvents            -> result {id, ok, value}
//   artifacts {id, reason}     save the console log and a screenshot -> result {id, ok, value:
//          {console, screenshot}} and an `artifacts` event
//   stop                       close Chromium (and its profile), write the console log, exit
//
// Every event the page pushes into window.phoneEvents is forwarded at once as an event of the
// same name (onRegistered, onRingingOut, onAnswer, onEnd, ...), its fields beside it and the
// page's own counter as page_seq. A failed command, a page error or a crash also saves the
// console log and a screenshot into artifacts_dir and emits `artifacts`.

import { createInterface } from 'node:readline';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

/** How long `stop` waits for the page to un-REGISTER and Chromium to close, in ms. */
const STOP_TIMEOUT_MS = 3000;
/** How long page load and window.phone may take, in ms. */
const PAGE_LOAD_TIMEOUT_MS = 15000;
/** Most console lines kept in memory. */
const MAX_CONSOLE_LINES = 20000;

let seq = 0;
let context = null;
let page = null;
let artifactsDir = null;
let artifactCount = 0;
let stopping = false;
const consoleLines = [];

function emit(event, fields = {}) {
  seq += 1;
  process.stdout.write(JSON.stringify({ seq, event, ...fields }) + '\n');
}

function log(...args) {
  process.stderr.write(`[sipjs-driver] ${args.join(' ')}\n`);
}

function consoleLine(kind, text) {
  if (consoleLines.length >= MAX_CONSOLE_LINES) consoleLines.shift();
  consoleLines.push(`${new Date().toISOString()} [${kind}] ${text}`);
}

/** The Chromium flags of the test harness (playwright adds its own automation flags). */
function chromiumArgs(fakeAudio, extra) {
  return [
    '--headless',
    '--no-sandbox',
    '--disable-gpu',
    '--disable-quic',
    '--no-first-run',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-sync',
    '--use-fake-ui-for-media-stream',
    '--use-fake-device-for-media-stream',
    `--use-file-for-fake-audio-capture=${fakeAudio}`,
    '--autoplay-policy=no-user-gesture-required',
    '--ignore-certificate-errors',
    // Host candidates on 127.0.0.1, so ICE can complete over loopback.
    '--allow-loopback-in-peer-connection',
    ...(extra ?? []),
  ];
}

function writeConsoleLog(name) {
  if (!artifactsDir) return null;
  const path = join(artifactsDir, name);
  writeFileSync(path, consoleLines.join('\n') + '\n');
  return path;
}

async function saveArtifacts(reason) {
  if (!artifactsDir) throw new Error('no artifacts_dir (start first)');
  artifactCount += 1;
  const stem = `failure-${artifactCount}`;
  const consolePath = writeConsoleLog(`${stem}-console.log`);
  let screenshot = null;
  if (page && !page.isClosed()) {
    screenshot = join(artifactsDir, `${stem}-screenshot.png`);
    try {
      await page.screenshot({ path: screenshot, timeout: 5000 });
    } catch (err) {
      log(`screenshot failed: ${err?.message ?? err}`);
      screenshot = null;
    }
  }
  const value = { console: consolePath, screenshot, reason: String(reason ?? '') };
  emit('artifacts', value);
  return value;
}

async function start(args) {
  if (context) throw new Error('already started');
  for (const key of ['page_url', 'chromium', 'user_data_dir', 'fake_audio', 'artifacts_dir']) {
    if (!args[key]) throw new Error(`start needs "${key}"`);
  }
  artifactsDir = args.artifacts_dir;
  mkdirSync(artifactsDir, { recursive: true });
  // A persistent context is the way to hand Chromium a --user-data-dir of our own: a fresh
  // folder per run, removed by the test's tmp dir.
  context = await chromium.launchPersistentContext(args.user_data_dir, {
    executablePath: args.chromium,
    headless: true,
    args: chromiumArgs(args.fake_audio, args.extra_args),
    ignoreHTTPSErrors: true,
    handleSIGINT: false,
    handleSIGTERM: false,
    handleSIGHUP: false,
  });
  context.on('close', () => {
    if (!stopping) emit('browserClosed');
  });
  page = context.pages()[0] ?? (await context.newPage());
  page.on('console', (msg) => consoleLine(msg.type(), msg.text()));
  page.on('pageerror', (err) => {
    consoleLine('pageerror', err?.stack ?? String(err));
    emit('pageError', { message: String(err?.message ?? err) });
  });
  page.on('crash', () => {
    consoleLine('crash', 'page crashed');
    emit('pageCrashed');
    saveArtifacts('page crashed').catch(() => {});
  });
  await page.exposeFunction('__phoneNotify', (ev) => {
    const { event, seq: pageSeq, ...fields } = ev ?? {};
    emit(String(event), { ...fields, page_seq: pageSeq });
  });
  await page.goto(args.page_url, { timeout: PAGE_LOAD_TIMEOUT_MS });
  await page.waitForFunction(() => window.phone !== undefined, null, { timeout: PAGE_LOAD_TIMEOUT_MS });
  const info = await page.evaluate(() => window.phone.versions());
  emit('started', {
    chromium: context.browser()?.version() ?? null,
    user_agent: info.userAgent,
    sipjs: { package: info.package, library: info.library },
  });
}

async function stop() {
  if (stopping) return;
  stopping = true;
  const finish = (code) => {
    try {
      writeConsoleLog('console.log');
    } catch (err) {
      log(`console log not written: ${err?.message ?? err}`);
    }
    emit('stopped');
    process.stdout.write('', () => process.exit(code));
  };
  if (!context) return finish(0);
  const timer = setTimeout(() => {
    log('stop timed out; exiting (playwright kills Chromium on exit)');
    finish(1);
  }, STOP_TIMEOUT_MS);
  try {
    if (page && !page.isClosed()) {
      // Let SIP.js un-REGISTER and BYE; bounded by STOP_TIMEOUT_MS above.
      await page.evaluate(() => window.phone?.stop()).catch(() => {});
    }
    await context.close();
  } catch (err) {
    log(`close failed: ${err?.message ?? err}`);
  }
  clearTimeout(timer);
  finish(0);
}

function needPage() {
  if (!page || page.isClosed()) throw new Error('not started: send {"cmd":"start",...} first');
  return page;
}

async function callMethod(args) {
  if (typeof args.method !== 'string') throw new Error('call needs "method"');
  return needPage().evaluate(
    async ([method, params]) => {
      const fn = window.phone[method];
      if (typeof fn !== 'function') throw new Error(`window.phone has no method ${method}`);
      return (await fn.apply(window.phone, params)) ?? null;
    },
    [args.method, args.args ?? []],
  );
}

const commands = {
  start: async (a) => {
    await start(a);
    return null;
  },
  stop: async () => {
    await stop();
    return null;
  },
  call: callMethod,
  events: () => needPage().evaluate(() => window.phoneEvents),
  artifacts: (a) => saveArtifacts(a.reason ?? 'requested'),
};

async function handleLine(line) {
  if (line.trim() === '') return;
  let msg;
  try {
    msg = JSON.parse(line);
  } catch (err) {
    emit('error', { cmd: null, message: `bad JSON command: ${err.message}` });
    return;
  }
  const { cmd, id = null, ...args } = msg ?? {};
  const handler = commands[cmd];
  if (!handler) {
    emit('error', { cmd: cmd ?? null, id, message: `unknown command: ${cmd}` });
    return;
  }
  try {
    const value = await handler(args);
    emit('result', { cmd, id, ok: true, value: value ?? null });
  } catch (err) {
    const message = String(err?.message ?? err);
    log(`command ${cmd} ${args.method ?? ''} failed: ${err?.stack ?? err}`);
    consoleLine('driver', `command ${cmd} ${args.method ?? ''} failed: ${message}`);
    let artifacts = null;
    if (cmd !== 'artifacts' && cmd !== 'stop' && artifactsDir) {
      artifacts = await saveArtifacts(`${cmd} ${args.method ?? ''} failed: ${message}`).catch(() => null);
    }
    emit('result', { cmd, id, ok: false, error: message, artifacts });
  }
}

process.on('uncaughtException', (err) => {
  log(`uncaught: ${err?.stack ?? err}`);
  emit('error', { cmd: null, message: `uncaught: ${err?.message ?? err}` });
});
process.on('unhandledRejection', (err) => {
  log(`unhandled rejection: ${err?.stack ?? err}`);
  emit('error', { cmd: null, message: `unhandled rejection: ${err?.message ?? err}` });
});

const rl = createInterface({ input: process.stdin, crlfDelay: Infinity });
rl.on('line', (line) => {
  handleLine(line);
});
// stdin closed (the test process went away): close Chromium instead of leaving it behind.
rl.on('close', () => {
  stop();
});
log(`ready (node ${process.version})`);
