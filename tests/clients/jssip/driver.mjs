// Scripted JsSIP client for the gateway's integration tests: a real browser SIP stack (JsSIP,
// SIP over WebSocket, RFC 7118) run in Node and driven by JSON lines.
//
//   stdin:  one JSON command per line, {"cmd": "...", ...}
//   stdout: one JSON event per line, {"seq": N, "event": "...", ...}; seq increases by one per event
//   stderr: logs (JsSIP warnings and errors; all of JsSIP's debug output with "debug": true)
//
// Commands: start, register, unregister, call, answer, hangup, hold, unhold, dtmf, message,
// drop_ws, stop (see README.md beside this file for their arguments and the events).
//
// MEDIA IS MOCKED. Node has no RTCPeerConnection, so webrtc_shim.mjs stands in for it where no
// real browser media can run: its offers and answers are a real Chromium SDP captured into
// tests/vectors/sdp/chrome_offer_signalling.sdp, but no ICE, DTLS or RTP ever happens. This
// driver is for signalling tests only. Calls pass JsSIP a fake MediaStream (`mediaStream`
// option), so getUserMedia is never needed.
//
// The WebSocket is the `ws` package behind a browser-shaped global (ws_polyfill.mjs), accepting
// self-signed certificates on wss:// because test gateways use throw-away ones.

import { createInterface } from 'node:readline';
import { installWebRtcShim, FakeMediaStream } from './webrtc_shim.mjs';
import { installWebSocketPolyfill, dropAll, hooks } from './ws_polyfill.mjs';

// JsSIP reads window.RTCPeerConnection and WebSocket at run time; install both before loading it.
installWebRtcShim();
installWebSocketPolyfill();
const { default: JsSIP } = await import('jssip');

/** How long `stop` waits for JsSIP to un-REGISTER, BYE and close its socket before exiting. */
const STOP_TIMEOUT_MS = 1500;
/** Defaults of JsSIP's sendDTMF (RFC 2976 INFO): tone length and the gap between tones, in ms. */
const DEFAULT_DTMF_DURATION_MS = 100;
const DEFAULT_DTMF_GAP_MS = 100;

let seq = 0;
let ua = null;
let trace = false;
let stopping = false;
/** call_id -> RTCSession, in creation order. */
const sessions = new Map();

function emit(event, fields = {}) {
  seq += 1;
  process.stdout.write(JSON.stringify({ seq, event, ...fields }) + '\n');
}

function log(...args) {
  process.stderr.write(`[driver] ${args.join(' ')}\n`);
}

function firstLine(text) {
  const end = text.indexOf('\r\n');
  return end < 0 ? text : text.slice(0, end);
}

function isSip(text) {
  // Keep-alives (RFC 5626 §3.5.1 CRLF over WebSocket) are not SIP messages.
  return text.trim().length > 0;
}

function traceHook(event) {
  return (url, text) => {
    if (!trace || !isSip(text)) return;
    const fields = { line: firstLine(text), url };
    if (trace === 'full') fields.raw = text;
    emit(event, fields);
  };
}
hooks.onSend = traceHook('sipSent');
hooks.onReceive = traceHook('sipReceived');

/** The X- headers of a JsSIP request (incoming or outgoing) as {Name: "v1, v2"}. */
function xHeaders(request) {
  const out = {};
  const add = (name, value) => {
    if (!/^x-/i.test(name)) return;
    out[name] = name in out ? `${out[name]}, ${value}` : String(value);
  };
  for (const [name, values] of Object.entries(request?.headers ?? {})) {
    for (const v of values) add(name, typeof v === 'object' && v !== null ? v.raw : v);
  }
  for (const line of request?.extraHeaders ?? []) {
    const colon = line.indexOf(':');
    if (colon > 0) add(line.slice(0, colon).trim(), line.slice(colon + 1).trim());
  }
  return out;
}

function statusOf(message) {
  return message && typeof message.status_code === 'number' ? message.status_code : null;
}

function uriOf(nameAddr) {
  return nameAddr?.uri ? nameAddr.uri.toString() : null;
}

function pickSession(args) {
  if (args.call_id !== undefined) {
    const s = sessions.get(args.call_id);
    if (!s) throw new Error(`no session with call_id ${args.call_id}`);
    return s;
  }
  const live = [...sessions.values()].filter((s) => !s.isEnded());
  if (live.length === 0) throw new Error('no live session');
  return live[live.length - 1];
}

function needUa() {
  if (!ua) throw new Error('not started: send {"cmd":"start",...} first');
  return ua;
}

function watchSession(session, request, originator) {
  const callId = request.call_id;
  sessions.set(callId, session);
  emit('newRTCSession', {
    call_id: callId,
    direction: originator === 'remote' ? 'incoming' : 'outgoing',
    remote_uri: uriOf(session.remote_identity),
    remote_display_name: session.remote_identity?.display_name ?? null,
    local_uri: uriOf(session.local_identity),
    headers: originator === 'remote' ? xHeaders(request) : {},
  });
  const on = (name, fn) =>
    session.on(name, (e) => {
      try {
        fn(e ?? {});
      } catch (err) {
        emit('error', { where: `session ${name}`, message: String(err?.message ?? err) });
      }
    });
  on('progress', (e) =>
    emit('progress', {
      call_id: callId,
      originator: e.originator,
      status: statusOf(e.response),
      reason: e.response?.reason_phrase ?? null,
    }),
  );
  on('accepted', (e) =>
    emit('accepted', { call_id: callId, originator: e.originator, status: statusOf(e.response) }),
  );
  on('confirmed', (e) => emit('confirmed', { call_id: callId, originator: e.originator }));
  on('ended', (e) =>
    emit('ended', {
      call_id: callId,
      originator: e.originator,
      cause: e.cause,
      status: statusOf(e.message),
    }),
  );
  on('failed', (e) =>
    emit('failed', {
      call_id: callId,
      originator: e.originator,
      cause: e.cause,
      status: statusOf(e.message),
    }),
  );
  on('hold', (e) => emit('hold', { call_id: callId, originator: e.originator }));
  on('unhold', (e) => emit('unhold', { call_id: callId, originator: e.originator }));
  on('newDTMF', (e) =>
    emit('newDTMF', {
      call_id: callId,
      originator: e.originator,
      tone: e.dtmf?.tone ?? null,
      duration: e.dtmf?.duration ?? null,
    }),
  );
  on('newInfo', (e) =>
    emit('newInfo', {
      call_id: callId,
      originator: e.originator,
      content_type: e.info?.contentType ?? null,
      body: e.info?.body ?? null,
    }),
  );
  on('sdp', (e) => emit('sdp', { call_id: callId, originator: e.originator, type: e.type, sdp: e.sdp }));
  for (const name of [
    'peerconnection:createofferfailed',
    'peerconnection:createanswerfailed',
    'peerconnection:setlocaldescriptionfailed',
    'peerconnection:setremotedescriptionfailed',
  ]) {
    on(name, (e) => emit('error', { where: name, call_id: callId, message: String(e?.message ?? e) }));
  }
}

function buildConfig(args) {
  if (!args.ws) throw new Error('start needs "ws"');
  if (!args.uri) throw new Error('start needs "uri"');
  const urls = String(args.ws)
    .split(',')
    .map((u) => u.trim())
    .filter(Boolean);
  const config = {
    sockets: urls.map((u) => new JsSIP.WebSocketInterface(u)),
    uri: args.uri,
    password: args.password,
    ha1: args.ha1,
    realm: args.realm,
    authorization_user: args.authorization_user,
    display_name: args.display_name,
    register: args.register ?? true,
    register_expires: args.register_expires,
    session_timers: args.session_timers ?? true,
    session_timers_refresh_method: args.session_timers_refresh_method,
    instance_id: args.instance_id,
    contact_uri: args.contact_uri,
    user_agent: args.user_agent,
    no_answer_timeout: args.no_answer_timeout,
    use_preloaded_route: args.use_preloaded_route,
    connection_recovery_min_interval: args.connection_recovery_min_interval,
    connection_recovery_max_interval: args.connection_recovery_max_interval,
  };
  for (const key of Object.keys(config)) if (config[key] === undefined) delete config[key];
  return config;
}

function start(args) {
  if (ua) throw new Error('already started');
  trace = args.trace ?? false;
  if (args.debug) JsSIP.debug.enable('JsSIP:*');
  else JsSIP.debug.enable('JsSIP:WARN:*,JsSIP:ERROR:*');
  const config = buildConfig(args);
  ua = new JsSIP.UA(config);
  ua.on('connected', (e) => emit('connected', { url: e.socket?.url ?? null }));
  ua.on('disconnected', (e) =>
    emit('disconnected', {
      url: e.socket?.url ?? null,
      error: Boolean(e.error),
      code: e.code ?? null,
      reason: e.reason ?? null,
    }),
  );
  ua.on('registered', (e) => emit('registered', { status: statusOf(e.response) }));
  ua.on('unregistered', (e) =>
    emit('unregistered', { status: statusOf(e.response), cause: e.cause ?? null }),
  );
  ua.on('registrationFailed', (e) =>
    emit('registrationFailed', { cause: e.cause ?? null, status: statusOf(e.response) }),
  );
  ua.on('newRTCSession', (e) => watchSession(e.session, e.request, e.originator));
  ua.on('newMessage', (e) => {
    const request = e.request;
    emit('newMessage', {
      direction: e.originator === 'remote' ? 'incoming' : 'outgoing',
      from: uriOf(request.from),
      to: uriOf(request.to),
      body: request.body ?? '',
      content_type: request.getHeader ? request.getHeader('Content-Type') ?? null : null,
      headers: xHeaders(request),
    });
  });
  ua.start();
  emit('started', { jssip: JsSIP.version, sockets: config.sockets.map((s) => s.url) });
}

function stop() {
  if (stopping) return;
  stopping = true;
  let finished = false;
  const finish = () => {
    if (finished) return;
    finished = true;
    emit('stopped');
    // Let stdout drain before leaving.
    process.stdout.write('', () => process.exit(0));
  };
  if (!ua) return finish();
  const timer = setTimeout(finish, STOP_TIMEOUT_MS);
  ua.once('disconnected', () => {
    clearTimeout(timer);
    finish();
  });
  ua.stop();
  if (!ua.isConnected()) {
    clearTimeout(timer);
    finish();
  }
}

const commands = {
  start,
  stop,
  register: () => needUa().register(),
  unregister: (a) => needUa().unregister({ all: Boolean(a.all) }),
  call: (a) => {
    if (!a.target) throw new Error('call needs "target"');
    needUa().call(a.target, {
      mediaStream: new FakeMediaStream(),
      mediaConstraints: { audio: true, video: false },
      extraHeaders: a.headers ?? [],
      sessionTimersExpires: a.session_timers_expires,
      pcConfig: { iceServers: [] },
    });
  },
  answer: (a) =>
    pickSession(a).answer({
      mediaStream: new FakeMediaStream(),
      mediaConstraints: { audio: true, video: false },
      extraHeaders: a.headers ?? [],
      pcConfig: { iceServers: [] },
    }),
  hangup: (a) =>
    pickSession(a).terminate({
      status_code: a.status,
      reason_phrase: a.reason,
      extraHeaders: a.headers ?? [],
    }),
  hold: (a) => {
    if (!pickSession(a).hold()) throw new Error('hold refused: session not ready to re-offer');
  },
  unhold: (a) => {
    if (!pickSession(a).unhold()) throw new Error('unhold refused: session not ready to re-offer');
  },
  dtmf: (a) => {
    if (!a.tones) throw new Error('dtmf needs "tones"');
    pickSession(a).sendDTMF(String(a.tones), {
      transportType: a.transport ?? 'INFO',
      duration: a.duration ?? DEFAULT_DTMF_DURATION_MS,
      interToneGap: a.inter_tone_gap ?? DEFAULT_DTMF_GAP_MS,
    });
  },
  message: (a) => {
    if (!a.target) throw new Error('message needs "target"');
    needUa().sendMessage(a.target, a.body ?? '', {
      contentType: a.content_type ?? 'text/plain',
      extraHeaders: a.headers ?? [],
      eventHandlers: {
        succeeded: (e) => emit('messageSucceeded', { status: statusOf(e.response) }),
        failed: (e) => emit('messageFailed', { cause: e.cause ?? null, status: statusOf(e.response) }),
      },
    });
  },
  drop_ws: () => {
    const dropped = dropAll();
    if (dropped === 0) throw new Error('no open WebSocket to drop');
    log(`dropped ${dropped} WebSocket(s) without a close frame`);
  },
};

function handleLine(line) {
  if (line.trim() === '') return;
  let msg;
  try {
    msg = JSON.parse(line);
  } catch (err) {
    emit('error', { cmd: null, message: `bad JSON command: ${err.message}` });
    return;
  }
  const { cmd, ...args } = msg ?? {};
  const handler = commands[cmd];
  if (!handler) {
    emit('error', { cmd: cmd ?? null, message: `unknown command: ${cmd}` });
    return;
  }
  try {
    handler(args);
  } catch (err) {
    log(`command ${cmd} failed: ${err?.stack ?? err}`);
    emit('error', { cmd, message: String(err?.message ?? err) });
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
rl.on('line', handleLine);
// stdin closed (the test process went away): leave cleanly instead of lingering.
rl.on('close', stop);
log(`ready (JsSIP ${JsSIP.version}, node ${process.version})`);
