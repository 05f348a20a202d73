// Headless Chromium or Firefox running the SIP.js webphone page (index.html + phone.js), driven
// by JSON lines, for the gateway's end-to-end tests. Same protocol style as ../jssip/driver.mjs:
//
//   stdin:  one JSON command per line, {"cmd": "...", ...}
//   stdout: one JSON event per line, {"seq": N, "event": "...", ...}; seq increases by one per event
//   stderr: logs
//
// Media is REAL: the browser's own WebRTC stack. Chromium's fake capture device plays the WAV
// file given to `start` as the microphone; Firefox's fake microphone is its built-in sine
// tone, at the frequency given to `start` (pref media.navigator.audio.fake_frequency).
//
// Commands:
//   start  {page_url, browser?, user_data_dir, artifacts_dir, extra_args?, ...}
//          browser "chromium" (the default): {chromium, fake_audio} -- launch Chromium through
//          playwright-core (executablePath = chromium).
//          browser "firefox": {firefox, tone_hz?, prefs?} -- launch Firefox through
//          puppeteer-core over WebDriver BiDi (executablePath = firefox).
//          Never a downloaded browser. A fresh profile in user_data_dir, open page_url, wait
//          for window.phone.
//          -> started {browser, version, chromium (Chromium only), user_agent,
//                      sipjs: {package, library}}
//   call   {id, method, args}  window.phone[method](...args) -> result {id, ok, value | error}
//   events {id}                window.phoneEvents            -> result {id, ok, value}
//   artifacts {id, reason}     save the console log and a screenshot -> result {id, ok, value:
//          {console, screenshot}} and an `artifacts` event
//   stop                       close the browser, write the console log, exit
//
// Every event the page pushes into window.phoneEvents is forwarded at once as an event of the
// same name (onRegistered, onRingingOut, onAnswer, onEnd, ...), its fields beside it and the
// page's own counter as page_seq. A failed command, a page error or a crash also saves the
// console log and a screenshot into artifacts_dir and emits `artifacts`.

import { createInterface } from 'node:readline';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

/** How long `stop` waits for the page to un-REGISTER and the browser to close, in ms. */
const STOP_TIMEOUT_MS = 3000;
/** How long page load and window.phone may take, in ms. */
const PAGE_LOAD_TIMEOUT_MS = 15000;
/** Most console lines kept in memory. */
const MAX_CONSOLE_LINES = 20000;

/** How long Firefox may take to start and open its WebDriver BiDi socket, in ms. */
const FIREFOX_LAUNCH_TIMEOUT_MS = 20000;
/** Firefox's fake microphone tone when `start` names none, in Hz (Firefox's own default). */
const FIREFOX_DEFAULT_TONE_HZ = 1000;

let seq = 0;
/** The launched browser: {name, version, page, close(), waitForFunction(fn)}. */
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

/**
 * Firefox prefs of the test harness (puppeteer adds its own automation prefs: no updates,
 * no telemetry, no first-run pages, remote services pointed nowhere).
 */
function firefoxPrefs(toneHz, extra) {
  return {
    // getUserMedia without a prompt, from the built-in fake devices: the microphone is a
    // sine tone at media.navigator.audio.fake_frequency Hz.
    'media.navigator.streams.fake': true,
    'media.navigator.permission.disabled': true,
    'media.navigator.audio.fake_frequency': Math.round(toneHz),
    // Host candidates shown as addresses, not mDNS names. The loopback pref is set for
    // completeness: Firefox 153 gathers no 127.0.0.1 candidate even with it, so a peer must
    // be on a non-loopback address (see tests/e2e/test_firefox_calls.py).
    'media.peerconnection.ice.loopback': true,
    'media.peerconnection.ice.obfuscate_host_addresses': false,
    // Remote audio plays without a user gesture.
    'media.autoplay.default': 0,
    'media.autoplay.blocking_policy': 0,
    'media.autoplay.block-webaudio': false,
    ...(extra ?? {}),
  };
}

/** Launch Chromium through playwright-core; returns the browser record. */
async function launchChromium(args) {
  for (const key of ['chromium', 'fake_audio']) {
    if (!args[key]) throw new Error(`start needs "${key}"`);
  }
  // A persistent context is the way to hand Chromium a --user-data-dir of our own: a fresh
  // folder per run, removed by the test's tmp dir.
  const ctx = await chromium.launchPersistentContext(args.user_data_dir, {
    executablePath: args.chromium,
    headless: true,
    args: chromiumArgs(args.fake_audio, args.extra_args),
    ignoreHTTPSErrors: true,
    handleSIGINT: false,
    handleSIGTERM: false,
    handleSIGHUP: false,
  });
  ctx.on('close', () => {
    if (!stopping) emit('browserClosed');
  });
  const pg = ctx.pages()[0] ?? (await ctx.newPage());
  pg.on('crash', () => {
    consoleLine('crash', 'page crashed');
    emit('pageCrashed');
    saveArtifacts('page crashed').catch(() => {});
  });
  const version = ctx.browser()?.version() ?? null;
  return {
    name: 'chromium',
    version,
    page: pg,
    close: () => ctx.close(),
    waitForFunction: (fn, timeout) => pg.waitForFunction(fn, null, { timeout }),
  };
}

/** Launch Firefox through puppeteer-core over WebDriver BiDi; returns the browser record. */
async function launchFirefox(args) {
  if (!args.firefox) throw new Error('start needs "firefox"');
  // Loaded only here: the Chromium runs never import puppeteer.
  const { default: puppeteer } = await import('puppeteer-core');
  const browser = await puppeteer.launch({
    browser: 'firefox',
    protocol: 'webDriverBiDi',
    executablePath: args.firefox,
    userDataDir: args.user_data_dir,
    headless: true,
    args: args.extra_args ?? [],
    extraPrefsFirefox: firefoxPrefs(args.tone_hz ?? FIREFOX_DEFAULT_TONE_HZ, args.prefs),
    acceptInsecureCerts: true,
    timeout: FIREFOX_LAUNCH_TIMEOUT_MS,
    handleSIGINT: false,
    handleSIGTERM: false,
    handleSIGHUP: false,
  });
  browser.on('disconnected', () => {
    if (!stopping) emit('browserClosed');
  });
  const pg = (await browser.pages())[0] ?? (await browser.newPage());
  pg.on('error', (err) => {
    consoleLine('crash', `page crashed: ${err?.message ?? err}`);
    emit('pageCrashed');
    saveArtifacts('page crashed').catch(() => {});
  });
  return {
    name: 'firefox',
    version: await browser.version(),
    page: pg,
    close: () => browser.close(),
    waitForFunction: (fn, timeout) => pg.waitForFunction(fn, { timeout }),
  };
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
  const browser = args.browser ?? 'chromium';
  const launch = { chromium: launchChromium, firefox: launchFirefox }[browser];
  if (!launch) throw new Error(`start: browser must be "chromium" or "firefox", not ${browser}`);
  for (const key of ['page_url', 'user_data_dir', 'artifacts_dir']) {
    if (!args[key]) throw new Error(`start needs "${key}"`);
  }
  artifactsDir = args.artifacts_dir;
  mkdirSync(artifactsDir, { recursive: true });
  context = await launch(args);
  page = context.page;
  // The same page API on both libraries from here on: console, pageerror, exposeFunction,
  // goto, evaluate(fn, arg), screenshot.
  page.on('console', (msg) => consoleLine(msg.type(), msg.text()));
  page.on('pageerror', (err) => {
    consoleLine('pageerror', err?.stack ?? String(err));
    emit('pageError', { message: String(err?.message ?? err) });
  });
  await page.exposeFunction('__phoneNotify', (ev) => {
    const { event, seq: pageSeq, ...fields } = ev ?? {};
    emit(String(event), { ...fields, page_seq: pageSeq });
  });
  await page.goto(args.page_url, { timeout: PAGE_LOAD_TIMEOUT_MS });
  await context.waitForFunction(() => window.phone !== undefined, PAGE_LOAD_TIMEOUT_MS);
  const info = await page.evaluate(() => window.phone.versions());
  emit('started', {
    browser: context.name,
    version: context.version,
    ...(context.name === 'chromium' ? { chromium: context.version } : {}),
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
    log('stop timed out; exiting (playwright and puppeteer kill the browser on exit)');
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
