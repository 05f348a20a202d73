// Webphone for the gateway's end-to-end tests: SIP.js 0.21.2 (SIP over WebSocket, RFC 7118)
// with real WebRTC media, shaped like a production webphone (settings wsServers, username,
// password, realm, displayName, cli; events onRegistered, onRingingOut, onAnswer, onEnd, ...).
//
/**
 * ConnexCS-style "Codec Delete": drop the offered codecs whose name matches one of the
 * regexes (whole name, case-insensitive). Opus cannot be deleted, as in the ConnexCS phone.
 */
function codecDeleteModifier(patterns) {
  const res = patterns.map((p) => new RegExp(`^(?:${p})$`, 'i'));
  return async (description) => {
    const lines = description.sdp.split('\r\n');
    const drop = new Set();
    for (const line of lines) {
      const m = /^a=rtpmap:(\d+) ([^/]+)\//.exec(line);
      if (m && m[2].toLowerCase() !== 'opus' && res.some((r) => r.test(m[2]))) drop.add(m[1]);
    }
    const out = [];
    for (const line of lines) {
      const m = /^m=audio (\d+) (\S+) (.*)$/.exec(line);
      if (m) {
        out.push(`m=audio ${m[1]} ${m[2]} ${m[3].split(' ').filter((pt) => !drop.has(pt)).join(' ')}`);
        continue;
      }
      const a = /^a=(rtpmap|fmtp|rtcp-fb):(\d+)[ ]/.exec(line);
      if (a && drop.has(a[2])) continue;
      out.push(line);
    }
    return { type: description.type, sdp: out.join('\r\n') };
  };
}

// window.phone      the API below; every method returns a Promise (or a value) and throws on
//                   misuse, so a test driver can report the error.
// window.phoneEvents every event, in order: {event, seq, time, ...fields}. If the page is run by
//                   driver.mjs, window.__phoneNotify(event) also forwards each one at once.
//
// SIP.js is loaded as ES modules from node_modules (served by the test's static server); no
// bundle is built or committed.

import {
  Inviter,
  Invitation,
  Registerer,
  RegistererState,
  SessionState,
  UserAgent,
  version as sipjsVersion,
} from './node_modules/sip.js/lib/index.js';

/** Default REGISTER expiry asked for, in seconds (RFC 3261 §10.2.1). */
const DEFAULT_REGISTER_EXPIRES_S = 600;
/** How long SIP.js waits for one WebSocket to open before trying the next server, in s. */
const DEFAULT_CONNECTION_TIMEOUT_S = 5;
/** Upper bound on ICE gathering before an offer or answer is sent anyway, in ms. */
const DEFAULT_ICE_GATHERING_TIMEOUT_MS = 2000;
/** Tone length and inter-tone gap used by sendDtmf, in ms (RFC 4733 §2.5 lets both vary). */
const DEFAULT_DTMF_DURATION_MS = 100;
const DEFAULT_DTMF_GAP_MS = 70;
/** How long one DTMF INFO may wait for its final response, in ms. */
const DTMF_INFO_TIMEOUT_MS = 5000;
/** DTMF symbols allowed (RFC 4733 §3.2 events 0-15). */
const DTMF_TONES = /^[0-9A-D#*]+$/i;
/** Full passes over wsServers after an established WebSocket drops. */
const DEFAULT_RECONNECT_ROUNDS = 1;
/** Most lines kept in the on-page log (the console keeps everything). */
const PAGE_LOG_LINES = 40;

const $ = (id) => document.getElementById(id);

const events = [];
window.phoneEvents = events;

/** Push one event into window.phoneEvents and forward it to the driver, if any. */
function emit(event, fields = {}) {
  const ev = { event, seq: events.length + 1, time: Date.now(), ...fields };
  events.push(ev);
  console.log(`[phone] ${event} ${JSON.stringify(fields)}`);
  const log = $('log');
  if (log) {
    const lines = (log.textContent ? log.textContent.split('\n') : []).slice(-PAGE_LOG_LINES + 1);
    lines.push(`${new Date(ev.time).toISOString().slice(11, 23)} ${event} ${JSON.stringify(fields)}`);
    log.textContent = lines.join('\n');
  }
  if (typeof window.__phoneNotify === 'function') {
    try {
      window.__phoneNotify(ev);
    } catch (err) {
      console.error('[phone] notify failed', err);
    }
  }
  return ev;
}

function show(id, text) {
  const el = $(id);
  if (el) el.textContent = text;
}

function errorText(err) {
  return String(err?.message ?? err);
}

/** Parse "wss://a, wss://b" (or an array) into a list of URLs, in failover order. */
function parseServers(wsServers) {
  const list = Array.isArray(wsServers) ? wsServers : String(wsServers ?? '').split(',');
  const urls = list.map((u) => String(u).trim()).filter(Boolean);
  if (urls.length === 0) throw new Error('configure: wsServers is empty');
  for (const url of urls) {
    if (!/^wss?:\/\//i.test(url)) throw new Error(`configure: not a ws:// or wss:// URL: ${url}`);
  }
  return urls;
}

/** The X- headers of an incoming request as {Name: value}. */
function xHeaders(message) {
  const out = {};
  for (const [name, values] of Object.entries(message?.headers ?? {})) {
    if (!/^x-/i.test(name)) continue;
    out[name] = values.map((v) => v.raw ?? String(v)).join(', ');
  }
  return out;
}

const state = {
  config: null,
  servers: [],
  serverIndex: 0,
  ua: null,
  connectedServer: null,
  connecting: null,
  stopping: false,
  registerer: null,
  wantRegistered: false,
  /** callId -> call record; see newCall(). */
  calls: new Map(),
  current: null,
  muted: false,
};

function cfg() {
  if (!state.config) throw new Error('not configured: call phone.configure({...}) first');
  return state.config;
}

function audioConstraints() {
  const c = cfg();
  if (c.audioProcessing) return { audio: true, video: false };
  // A steady test tone is what noise suppression removes; tests that measure it turn all
  // three processing stages off.
  return {
    audio: { echoCancellation: false, noiseSuppression: false, autoGainControl: false },
    video: false,
  };
}

function sdhOptions() {
  return {
    constraints: audioConstraints(),
    iceGatheringTimeout: cfg().iceGatheringTimeoutMs,
  };
}

function buildUserAgent() {
  const c = cfg();
  const uri = UserAgent.makeURI(`sip:${c.username}@${c.realm}`);
  if (!uri) throw new Error(`configure: bad SIP URI sip:${c.username}@${c.realm}`);
  const options = {
    uri,
    authorizationUsername: c.authorizationUsername ?? c.username,
    authorizationPassword: c.password,
    displayName: c.displayName ?? '',
    transportOptions: {
      server: state.servers[0],
      connectionTimeout: c.connectionTimeout,
      traceSip: c.traceSip,
    },
    sessionDescriptionHandlerFactoryOptions: {
      peerConnectionConfiguration: { iceServers: c.iceServers },
      iceGatheringTimeout: c.iceGatheringTimeoutMs,
    },
    logLevel: c.logLevel,
    noAnswerTimeout: c.noAnswerTimeout,
    // onInvite decides: 180 Ringing while waiting for answer(), none when auto-answering.
    sendInitialProvisionalResponse: false,
    delegate: {
      onInvite: (invitation) => onInvite(invitation),
      onDisconnect: (error) => onTransportDisconnect(error),
    },
  };
  if (c.userAgentString) options.userAgentString = c.userAgentString;
  if (c.viaHost) options.viaHost = c.viaHost;
  if (c.contactName) options.contactName = c.contactName;
  return new UserAgent(options);
}

/**
 * Connect to the first server that accepts a WebSocket, starting at state.serverIndex and
 * going round the list once (wsServers failover). Emits onTransportFailed for each one that
 * does not and onTransportConnected for the one that does.
 */
async function connect() {
  const ua = state.ua;
  if (ua.isConnected()) return state.connectedServer;
  if (state.connecting) return state.connecting;
  state.connecting = (async () => {
    const n = state.servers.length;
    for (let attempt = 0; attempt < n; attempt += 1) {
      const index = (state.serverIndex + attempt) % n;
      const server = state.servers[index];
      // SIP.js holds one server per transport; it reads this field on every connect().
      ua.transport.configuration.server = server;
      show('transport-state', `connecting ${server}`);
      emit('onTransportConnecting', { server, attempt: attempt + 1 });
      try {
        if (ua.state === 'Started') await ua.reconnect();
        else await ua.start();
        state.serverIndex = index;
        state.connectedServer = server;
        show('transport-state', `connected ${server}`);
        emit('onTransportConnected', { server, attempt: attempt + 1 });
        return server;
      } catch (err) {
        emit('onTransportFailed', { server, attempt: attempt + 1, error: errorText(err) });
        if (state.stopping) break;
      }
    }
    show('transport-state', 'no server');
    throw new Error(`no WebSocket server reachable: ${state.servers.join(', ')}`);
  })();
  try {
    return await state.connecting;
  } finally {
    state.connecting = null;
  }
}

function onTransportDisconnect(error) {
  const server = state.connectedServer;
  state.connectedServer = null;
  show('transport-state', 'disconnected');
  emit('onTransportDisconnected', { server, error: error ? errorText(error) : null });
  if (!error || state.stopping) return;
  // The server went away: fail over to the next one, then re-REGISTER if we were registered.
  state.serverIndex = (state.serverIndex + 1) % state.servers.length;
  (async () => {
    for (let round = 0; round < cfg().reconnectRounds; round += 1) {
      try {
        await connect();
        if (state.wantRegistered && state.registerer) await sendRegister();
        return;
      } catch (err) {
        emit('onError', { where: 'reconnect', error: errorText(err) });
      }
    }
  })();
}

function onRegistererState(newState) {
  show('registration-state', newState);
  if (newState === RegistererState.Registered) {
    emit('onRegistered', { server: state.connectedServer, expires: state.registerer?.expires ?? null });
  } else if (newState === RegistererState.Unregistered) {
    emit('onUnregistered', { server: state.connectedServer });
  }
}

async function sendRegister() {
  await state.registerer.register({
    requestDelegate: {
      onReject: (response) =>
        emit('onRegistrationFailed', {
          statusCode: response.message.statusCode,
          reasonPhrase: response.message.reasonPhrase,
        }),
    },
  });
}

// ---- calls ----------------------------------------------------------------------------------

function newCall(session, direction, remote) {
  const call = {
    session,
    direction,
    callId: session.request?.callId ?? session.id,
    remote,
    startTime: Date.now(),
    ringTime: null,
    answerTime: null,
    endTime: null,
    statusCode: null,
    reasonPhrase: null,
    cause: null,
    endedBy: null,
    held: false,
    dtmfSent: '',
    ended: false,
  };
  state.calls.set(call.callId, call);
  state.current = call;
  session.stateChange.addListener((s) => onSessionState(call, s));
  session.delegate = {
    onBye: (bye) => {
      call.cause ??= 'remote_hangup';
      call.endedBy ??= 'remote';
      bye.accept();
    },
    onInfo: (info) => {
      emit('onInfoReceived', {
        callId: call.callId,
        contentType: info.request.getHeader('Content-Type') ?? null,
        body: info.request.body ?? '',
      });
      info.accept();
    },
  };
  return call;
}

function cdrOf(call) {
  return {
    callId: call.callId,
    direction: call.direction,
    remote: call.remote,
    startTime: new Date(call.startTime).toISOString(),
    answerTime: call.answerTime ? new Date(call.answerTime).toISOString() : null,
    endTime: new Date(call.endTime).toISOString(),
    ringMs: call.ringTime ? call.ringTime - call.startTime : null,
    setupMs: call.answerTime ? call.answerTime - call.startTime : null,
    durationMs: call.answerTime ? call.endTime - call.answerTime : 0,
    answered: call.answerTime !== null,
    statusCode: call.statusCode,
    reasonPhrase: call.reasonPhrase,
    cause: call.cause,
    endedBy: call.endedBy,
    dtmfSent: call.dtmfSent,
  };
}

function causeOfStatus(code) {
  if (code === 486 || code === 600) return 'busy';
  if (code === 487) return 'canceled';
  if (code === 408 || code === 480) return 'no_answer';
  if (code === 401 || code === 407 || code === 403) return 'unauthorized';
  return 'rejected';
}

function attachRemoteAudio(call) {
  const sdh = call.session.sessionDescriptionHandler;
  const audio = $('remote-audio');
  if (!sdh || !audio) return;
  audio.srcObject = sdh.remoteMediaStream;
  audio.play().catch((err) => console.warn('[phone] remote audio play failed', err));
}

function onSessionState(call, s) {
  show('call-state', `${call.direction} ${call.remote}: ${s}`);
  if (s === SessionState.Established) {
    call.answerTime ??= Date.now();
    attachRemoteAudio(call);
    if (state.muted) call.session.sessionDescriptionHandler?.enableSenderTracks(false);
    emit('onAnswer', { callId: call.callId, direction: call.direction, remote: call.remote });
  } else if (s === SessionState.Terminated && !call.ended) {
    call.ended = true;
    call.endTime = Date.now();
    if (!call.cause) call.cause = call.answerTime ? 'local_hangup' : 'failed';
    if (!call.endedBy) call.endedBy = 'local';
    if (state.current === call) state.current = null;
    emit('onEnd', { callId: call.callId, cause: call.cause, cdr: cdrOf(call) });
  }
}

function onInvite(invitation) {
  const remote = invitation.remoteIdentity.uri.toString();
  const call = newCall(invitation, 'inbound', remote);
  invitation.delegate.onCancel = () => {
    call.cause = 'canceled';
    call.endedBy = 'remote';
  };
  emit('onIncoming', {
    callId: call.callId,
    remote,
    displayName: invitation.remoteIdentity.displayName ?? null,
    headers: xHeaders(invitation.request),
    autoAnswer: cfg().autoAnswer,
  });
  if (cfg().autoAnswer) {
    setTimeout(() => {
      if (invitation.state === SessionState.Initial) {
        answerCall(call).catch((err) => emit('onError', { where: 'autoAnswer', error: errorText(err) }));
      }
    }, cfg().autoAnswerDelayMs);
  } else {
    invitation.progress().catch((err) => emit('onError', { where: 'progress', error: errorText(err) }));
  }
}

async function answerCall(call) {
  await call.session.accept({ sessionDescriptionHandlerOptions: sdhOptions() });
  return { callId: call.callId };
}

function currentCall() {
  const call = state.current;
  if (!call || call.ended) throw new Error('no current call');
  return call;
}

function establishedCall() {
  const call = currentCall();
  if (call.session.state !== SessionState.Established) {
    throw new Error(`call is ${call.session.state}, not Established`);
  }
  return call;
}

function targetUri(number) {
  const text = String(number);
  const uri = UserAgent.makeURI(/^sips?:/i.test(text) ? text : `sip:${text}@${cfg().realm}`);
  if (!uri) throw new Error(`makeCall: bad target ${number}`);
  return uri;
}

async function reinvite(call, hold) {
  const session = call.session;
  const options = session.sessionDescriptionHandlerOptionsReInvite;
  options.hold = hold;
  session.sessionDescriptionHandlerOptionsReInvite = options;
  // Codec Delete holds for every offer of the call, re-INVITEs (hold, unhold) included, as
  // in the ConnexCS phone: otherwise a hold re-offer brings the deleted codecs back.
  const patterns = cfg().codecDelete;
  session.sessionDescriptionHandlerModifiersReInvite = patterns.length ? [codecDeleteModifier(patterns)] : [];
  const outcome = new Promise((resolve, reject) => {
    session
      .invite({
        requestDelegate: {
          onAccept: () => resolve(),
          onReject: (response) =>
            reject(new Error(`re-INVITE rejected: ${response.message.statusCode}`)),
        },
      })
      .catch(reject);
  });
  try {
    await outcome;
  } catch (err) {
    options.hold = call.held;
    throw err;
  }
  call.held = hold;
  const sdh = session.sessionDescriptionHandler;
  sdh?.enableReceiverTracks(!hold);
  sdh?.enableSenderTracks(!hold && !state.muted);
  emit('onHold', { callId: call.callId, held: hold });
  return { held: hold };
}

async function sendInfoDtmf(call, tone, durationMs) {
  // draft-kaplan-dispatch-info-dtmf-package-00 §5: body "Signal=<tone>\r\nDuration=<ms>".
  const body = {
    contentDisposition: 'render',
    contentType: 'application/dtmf-relay',
    content: `Signal=${tone}\r\nDuration=${durationMs}\r\n`,
  };
  const statusCode = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no answer to DTMF INFO ${tone}`)), DTMF_INFO_TIMEOUT_MS);
    const done = (fn) => (value) => {
      clearTimeout(timer);
      fn(value);
    };
    call.session
      .info({
        requestOptions: { body },
        requestDelegate: {
          onAccept: (response) => done(resolve)(response.message.statusCode),
          onReject: (response) =>
            done(reject)(new Error(`DTMF INFO ${tone} rejected: ${response.message.statusCode}`)),
        },
      })
      .catch(done(reject));
  });
  return statusCode;
}

function watchDtmfSender(call) {
  const pc = call.session.sessionDescriptionHandler?.peerConnection;
  const sender = pc?.getSenders().find((s) => s.dtmf);
  if (!sender || sender.dtmf.__phoneWatched) return;
  sender.dtmf.__phoneWatched = true;
  sender.dtmf.addEventListener('tonechange', (e) => {
    if (!e.tone) return;
    call.dtmfSent += e.tone;
    emit('onDtmfSent', { callId: call.callId, digit: e.tone, mode: 'rfc4733' });
  });
}

function pickStats(report) {
  const out = { inbound: null, outbound: null, codec: null, selectedPair: null };
  const byId = new Map();
  report.forEach((s) => byId.set(s.id, s));
  report.forEach((s) => {
    if (s.kind !== undefined && s.kind !== 'audio') return;
    if (s.type === 'inbound-rtp') {
      out.inbound = {
        packetsReceived: s.packetsReceived ?? 0,
        bytesReceived: s.bytesReceived ?? 0,
        packetsLost: s.packetsLost ?? 0,
        jitter: s.jitter ?? null,
        audioLevel: s.audioLevel ?? null,
        totalAudioEnergy: s.totalAudioEnergy ?? null,
      };
      const codec = byId.get(s.codecId);
      if (codec) out.codec = { mimeType: codec.mimeType, clockRate: codec.clockRate, payloadType: codec.payloadType };
    } else if (s.type === 'outbound-rtp') {
      const source = byId.get(s.mediaSourceId);
      out.outbound = {
        packetsSent: s.packetsSent ?? 0,
        bytesSent: s.bytesSent ?? 0,
        // The level of what is being sent lives in the media-source stats (the microphone).
        audioLevel: source?.audioLevel ?? null,
        totalAudioEnergy: source?.totalAudioEnergy ?? null,
      };
      const codec = byId.get(s.codecId);
      if (codec && !out.codec) out.codec = { mimeType: codec.mimeType, clockRate: codec.clockRate, payloadType: codec.payloadType };
    } else if (s.type === 'candidate-pair' && s.nominated && s.state === 'succeeded') {
      const local = byId.get(s.localCandidateId);
      const remote = byId.get(s.remoteCandidateId);
      out.selectedPair = {
        local: local ? `${local.address ?? local.ip}:${local.port}/${local.protocol}` : null,
        remote: remote ? `${remote.address ?? remote.ip}:${remote.port}/${remote.protocol}` : null,
      };
    }
  });
  return out;
}

// ---- the API --------------------------------------------------------------------------------

const phone = {
  /** SIP.js version: the npm package's and the one the library reports (LIBRARY_VERSION). */
  async versions() {
    const pkg = await fetch('./node_modules/sip.js/package.json').then((r) => r.json());
    return { package: pkg.version, library: sipjsVersion, userAgent: navigator.userAgent };
  },

  /**
   * Settings, named as a webphone's: wsServers ("wss://a,wss://b": failover order), username,
   * password, realm, displayName, cli (From user on outbound calls). Options: autoAnswer,
   * autoAnswerDelayMs, iceServers ([] by default: no STUN lookups), iceGatheringTimeoutMs,
   * registerExpires, connectionTimeout (s), reconnectRounds, audioProcessing (default true),
   * traceSip, logLevel, userAgentString, viaHost, contactName, authorizationUsername,
   * noAnswerTimeout (s), extraHeaders (list of "Name: value" added to INVITEs).
   */
  async configure(options) {
    if (!options || typeof options !== 'object') throw new Error('configure needs an object');
    for (const key of ['username', 'realm']) {
      if (!options[key]) throw new Error(`configure: ${key} is required`);
    }
    if (state.ua) await phone.stop();
    state.servers = parseServers(options.wsServers);
    state.serverIndex = 0;
    state.stopping = false;
    state.config = {
      password: '',
      displayName: '',
      cli: null,
      autoAnswer: false,
      autoAnswerDelayMs: 0,
      iceServers: [],
      iceGatheringTimeoutMs: DEFAULT_ICE_GATHERING_TIMEOUT_MS,
      registerExpires: DEFAULT_REGISTER_EXPIRES_S,
      connectionTimeout: DEFAULT_CONNECTION_TIMEOUT_S,
      reconnectRounds: DEFAULT_RECONNECT_ROUNDS,
      audioProcessing: true,
      traceSip: true,
      logLevel: 'log',
      noAnswerTimeout: 60,
      extraHeaders: [],
      codecDelete: [],
      ...options,
    };
    state.ua = buildUserAgent();
    emit('onConfigured', { servers: state.servers, uri: `sip:${options.username}@${options.realm}` });
    return { servers: state.servers };
  },

  /** Connect (with failover) without registering; resolves to the server connected to. */
  async connect() {
    cfg();
    return { server: await connect() };
  },

  /** Connect (with failover) and send REGISTER; the outcome comes as onRegistered or onRegistrationFailed. */
  async register() {
    cfg();
    await connect();
    if (!state.registerer) {
      state.registerer = new Registerer(state.ua, { expires: cfg().registerExpires });
      state.registerer.stateChange.addListener(onRegistererState);
    }
    state.wantRegistered = true;
    await sendRegister();
    return { server: state.connectedServer };
  },

  /** Send REGISTER with Expires 0; the outcome comes as onUnregistered. */
  async unregister() {
    if (!state.registerer) throw new Error('not registered');
    state.wantRegistered = false;
    await state.registerer.unregister();
    return {};
  },

  /** Call a number (sip:<number>@<realm>) or a full SIP URI; resolves to {callId} once the INVITE is sent. */
  async makeCall(number) {
    const c = cfg();
    await connect();
    const target = targetUri(number);
    const params = {};
    if (c.cli) {
      params.fromUri = UserAgent.makeURI(`sip:${c.cli}@${c.realm}`);
      params.fromDisplayName = c.displayName || undefined;
    }
    const inviter = new Inviter(state.ua, target, {
      params,
      extraHeaders: c.extraHeaders,
      sessionDescriptionHandlerOptions: sdhOptions(),
      sessionDescriptionHandlerModifiers: c.codecDelete.length ? [codecDeleteModifier(c.codecDelete)] : [],
    });
    const call = newCall(inviter, 'outbound', target.toString());
    // (codecDelete: the ConnexCS webphone's "Codec Delete", regexes over codec names)
    await inviter.invite({
      requestDelegate: {
        onProgress: (response) => {
          const code = response.message.statusCode;
          if (code === 180 || code === 183) {
            call.ringTime ??= Date.now();
            emit('onRingingOut', { callId: call.callId, statusCode: code, reasonPhrase: response.message.reasonPhrase });
          }
        },
        onAccept: (response) => {
          call.statusCode = response.message.statusCode;
          call.reasonPhrase = response.message.reasonPhrase;
        },
        onReject: (response) => {
          call.statusCode = response.message.statusCode;
          call.reasonPhrase = response.message.reasonPhrase;
          call.cause ??= causeOfStatus(call.statusCode);
          call.endedBy ??= 'remote';
        },
      },
    });
    return { callId: call.callId };
  },

  /** Answer the ringing inbound call. */
  async answer() {
    const call = currentCall();
    if (!(call.session instanceof Invitation)) throw new Error('current call is not inbound');
    return answerCall(call);
  },

  /** End the current call: CANCEL while it rings out, 486 while it rings in, BYE once answered. */
  async hangup() {
    const call = currentCall();
    const session = call.session;
    call.endedBy ??= 'local';
    if (session.state === SessionState.Established) {
      call.cause ??= 'local_hangup';
      await session.bye();
    } else if (session instanceof Inviter) {
      call.cause ??= 'canceled';
      await session.cancel();
    } else {
      call.cause ??= 'rejected';
      call.statusCode = 486;
      await session.reject({ statusCode: 486 });
    }
    return { callId: call.callId };
  },

  /** Put the call on hold: re-INVITE with a=sendonly (RFC 3264 §8.4); onHold {held: true} on 2xx. */
  async hold() {
    return reinvite(establishedCall(), true);
  },

  /** Take the call off hold: re-INVITE with a=sendrecv; onHold {held: false} on 2xx. */
  async unhold() {
    return reinvite(establishedCall(), false);
  },

  /** Stop sending microphone audio (the track is disabled: RTP goes on, carrying silence). */
  async mute() {
    state.muted = true;
    state.current?.session.sessionDescriptionHandler?.enableSenderTracks(false);
    emit('onMute', { muted: true });
    return { muted: true };
  },

  async unmute() {
    state.muted = false;
    const call = state.current;
    call?.session.sessionDescriptionHandler?.enableSenderTracks(!call.held);
    emit('onMute', { muted: false });
    return { muted: false };
  },

  /**
   * Send DTMF digits: mode "info" sends one INFO (application/dtmf-relay) per digit and waits for
   * its 2xx; "rfc4733" sends telephone-events in RTP (RFC 4733) through RTCDTMFSender.
   * onDtmfSent is emitted per digit.
   */
  async sendDtmf(digits, mode = 'info', options = {}) {
    const call = establishedCall();
    const tones = String(digits ?? '');
    if (!DTMF_TONES.test(tones)) throw new Error(`sendDtmf: bad digits ${JSON.stringify(tones)}`);
    const durationMs = options.durationMs ?? DEFAULT_DTMF_DURATION_MS;
    const gapMs = options.gapMs ?? DEFAULT_DTMF_GAP_MS;
    if (mode === 'info') {
      for (const tone of tones) {
        const statusCode = await sendInfoDtmf(call, tone, durationMs);
        call.dtmfSent += tone;
        emit('onDtmfSent', { callId: call.callId, digit: tone, mode, statusCode });
      }
    } else if (mode === 'rfc4733') {
      watchDtmfSender(call);
      const sdh = call.session.sessionDescriptionHandler;
      if (!sdh?.sendDtmf(tones, { duration: durationMs, interToneGap: gapMs })) {
        throw new Error('sendDtmf: the browser cannot send RFC 4733 events on this call');
      }
    } else {
      throw new Error(`sendDtmf: mode must be "info" or "rfc4733", not ${mode}`);
    }
    return { digits: tones, mode };
  },

  /** RTP counters of the current (or given) call from RTCPeerConnection.getStats(). */
  async getStats(callId) {
    const call = callId ? state.calls.get(callId) : state.current;
    if (!call) throw new Error('getStats: no such call');
    const pc = call.session.sessionDescriptionHandler?.peerConnection;
    if (!pc) throw new Error('getStats: the call has no peer connection');
    return {
      callId: call.callId,
      connectionState: pc.connectionState,
      iceConnectionState: pc.iceConnectionState,
      ...pickStats(await pc.getStats()),
    };
  },

  /** The call records so far (the cdr of ended calls). */
  calls() {
    return [...state.calls.values()].map((c) => (c.ended ? cdrOf(c) : { callId: c.callId, direction: c.direction, state: c.session.state }));
  },

  /** Un-REGISTER, end calls and close the WebSocket. */
  async stop() {
    if (!state.ua) return {};
    state.stopping = true;
    const ua = state.ua;
    state.ua = null;
    state.registerer = null;
    state.wantRegistered = false;
    await ua.stop();
    state.connectedServer = null;
    show('transport-state', 'stopped');
    emit('onStopped', {});
    return {};
  },
};

window.phone = phone;
show('sipjs-version', sipjsVersion);
emit('onLoaded', { sipjs: sipjsVersion });
