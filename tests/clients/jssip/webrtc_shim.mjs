// Signalling-only stand-ins for the browser's RTCPeerConnection, RTCSessionDescription and
// MediaStream, so that JsSIP's RTCSession can run in Node.
//
// THIS IS A MOCK. Node has no WebRTC media stack, so nothing here gathers candidates, runs ICE,
// DTLS or SRTP, or moves a single packet. It exists only so SIP signalling tests can drive a real
// JsSIP. What it does:
//   * createOffer() resolves to a real Chromium offer, captured from a real browser and held in
//     tests/vectors/sdp/chrome_offer_signalling.sdp (see capture_offer.mjs), with the o= session
//     version bumped on every new description as a browser does (RFC 3264 §8).
//   * createAnswer() resolves to that same capture turned into an answer the way Chromium
//     answers: a=setup:active instead of actpass (RFC 5763 §5), the direction attribute mirrored
//     from the remote offer (RFC 3264 §6.1), and the audio m-line's mid set to the offer's.
//   * setLocalDescription()/setRemoteDescription() record the description and step
//     signalingState as RFC 8829 §4.1.8-9 describes.
//   * iceGatheringState is 'complete' at once; getSenders()/getReceivers()/getTransceivers() are
//     empty; close() marks the connection closed.
// Media tests (a later piece of work) need a real browser; do not build media assertions on it.

import { readFileSync } from 'node:fs';
import { randomUUID } from 'node:crypto';

export const DEFAULT_OFFER_PATH = new URL(
  '../../vectors/sdp/chrome_offer_signalling.sdp',
  import.meta.url,
);

const DIRECTIONS = ['sendrecv', 'sendonly', 'recvonly', 'inactive'];
// RFC 3264 §6.1: the answerer's direction for each offered direction.
const ANSWER_DIRECTION = {
  sendrecv: 'sendrecv',
  sendonly: 'recvonly',
  recvonly: 'sendonly',
  inactive: 'inactive',
};

let templateOffer = null;

/** Load (once) the captured browser offer the shim hands out. */
export function loadTemplateOffer(path = DEFAULT_OFFER_PATH) {
  if (templateOffer === null || path !== DEFAULT_OFFER_PATH) {
    const sdp = readFileSync(path, 'utf8');
    if (!sdp.startsWith('v=0')) throw new Error(`not an SDP file: ${path}`);
    templateOffer = sdp;
  }
  return templateOffer;
}

function splitLines(sdp) {
  return sdp.split(/\r?\n/).filter((line) => line.length > 0);
}

function joinLines(lines) {
  return lines.join('\r\n') + '\r\n';
}

/** The direction of the first audio m-section of an SDP (RFC 3264 §5.1 default sendrecv). */
function audioDirection(sdp) {
  let section = 'session';
  let sessionDirection = 'sendrecv';
  for (const line of splitLines(sdp)) {
    if (line.startsWith('m=')) {
      if (section === 'audio') break;
      section = line.startsWith('m=audio') ? 'audio' : 'other';
      continue;
    }
    const attr = line.startsWith('a=') ? line.slice(2) : null;
    if (attr === null || !DIRECTIONS.includes(attr)) continue;
    // RFC 8866 §6.7: a media-level direction overrides the session-level one.
    if (section === 'audio') return attr;
    if (section === 'session') sessionDirection = attr;
  }
  return sessionDirection;
}

function audioMid(sdp) {
  let inAudio = false;
  for (const line of splitLines(sdp)) {
    if (line.startsWith('m=')) {
      if (inAudio) break;
      inAudio = line.startsWith('m=audio');
    } else if (inAudio && line.startsWith('a=mid:')) {
      return line.slice('a=mid:'.length);
    }
  }
  return null;
}

function withVersion(sdp, version) {
  return joinLines(
    splitLines(sdp).map((line) => {
      if (!line.startsWith('o=')) return line;
      const parts = line.split(' ');
      parts[2] = String(version);
      return parts.join(' ');
    }),
  );
}

function answerFromOffer(template, remoteOffer) {
  const direction = ANSWER_DIRECTION[audioDirection(remoteOffer)];
  const remoteMid = audioMid(remoteOffer);
  const templateMid = audioMid(template);
  return joinLines(
    splitLines(template).map((line) => {
      if (line === 'a=setup:actpass') return 'a=setup:active';
      if (DIRECTIONS.includes(line.slice(2)) && line.startsWith('a=')) return `a=${direction}`;
      if (remoteMid !== null && templateMid !== null) {
        if (line === `a=mid:${templateMid}`) return `a=mid:${remoteMid}`;
        if (line.startsWith('a=group:BUNDLE ')) return `a=group:BUNDLE ${remoteMid}`;
      }
      return line;
    }),
  );
}

function domError(name, message) {
  const err = new Error(message);
  err.name = name;
  return err;
}

/** Stand-in for RTCSessionDescription / RTCSessionDescriptionInit. */
export class FakeRTCSessionDescription {
  constructor(init = {}) {
    this.type = init.type;
    this.sdp = init.sdp ?? '';
  }

  toJSON() {
    return { type: this.type, sdp: this.sdp };
  }
}

/** Stand-in for a MediaStreamTrack: has the fields JsSIP touches, carries no media. */
export class FakeMediaStreamTrack {
  constructor(kind = 'audio') {
    this.kind = kind;
    this.id = randomUUID();
    this.label = `fake ${kind} (signalling tests, no media)`;
    this.enabled = true;
    this.muted = false;
    this.readyState = 'live';
  }

  stop() {
    this.readyState = 'ended';
  }

  clone() {
    return new FakeMediaStreamTrack(this.kind);
  }
}

/** Stand-in for MediaStream, passed to JsSIP as `mediaStream` so no getUserMedia is needed. */
export class FakeMediaStream {
  constructor(tracks = [new FakeMediaStreamTrack('audio')]) {
    this.id = randomUUID();
    this._tracks = [...tracks];
  }

  get active() {
    return this._tracks.some((t) => t.readyState === 'live');
  }

  getTracks() {
    return [...this._tracks];
  }

  getAudioTracks() {
    return this._tracks.filter((t) => t.kind === 'audio');
  }

  getVideoTracks() {
    return this._tracks.filter((t) => t.kind === 'video');
  }

  addTrack(track) {
    if (!this._tracks.includes(track)) this._tracks.push(track);
  }

  removeTrack(track) {
    this._tracks = this._tracks.filter((t) => t !== track);
  }
}

/** Signalling-only stand-in for RTCPeerConnection (see the header of this file). */
export class FakeRTCPeerConnection extends EventTarget {
  constructor(configuration = {}) {
    super();
    this._configuration = configuration;
    this._template = loadTemplateOffer();
    this._version = Number(
      splitLines(this._template)
        .find((l) => l.startsWith('o='))
        ?.split(' ')[2] ?? 2,
    );
    this._created = 0;
    this._tracks = [];
    this.localDescription = null;
    this.remoteDescription = null;
    this.currentLocalDescription = null;
    this.currentRemoteDescription = null;
    this.pendingLocalDescription = null;
    this.pendingRemoteDescription = null;
    this.signalingState = 'stable';
    this.iceGatheringState = 'complete';
    this.iceConnectionState = 'new';
    this.connectionState = 'new';
    this.canTrickleIceCandidates = null;
  }

  _checkOpen() {
    if (this.signalingState === 'closed') {
      throw domError('InvalidStateError', 'RTCPeerConnection is closed');
    }
  }

  _nextSdp(sdp) {
    // A browser bumps the o= version for each new local description (RFC 3264 §8).
    const version = this._version + this._created;
    this._created += 1;
    return withVersion(sdp, version);
  }

  getConfiguration() {
    return this._configuration;
  }

  setConfiguration(configuration) {
    this._configuration = configuration;
  }

  async createOffer() {
    this._checkOpen();
    return new FakeRTCSessionDescription({ type: 'offer', sdp: this._nextSdp(this._template) });
  }

  async createAnswer() {
    this._checkOpen();
    if (this.signalingState !== 'have-remote-offer') {
      throw domError('InvalidStateError', `createAnswer in state ${this.signalingState}`);
    }
    const sdp = answerFromOffer(this._template, this.remoteDescription.sdp);
    return new FakeRTCSessionDescription({ type: 'answer', sdp: this._nextSdp(sdp) });
  }

  async setLocalDescription(desc) {
    this._checkOpen();
    const d = new FakeRTCSessionDescription(desc);
    if (d.type === 'offer') {
      if (!['stable', 'have-local-offer'].includes(this.signalingState)) {
        throw domError('InvalidStateError', `local offer in state ${this.signalingState}`);
      }
      this.pendingLocalDescription = d;
      this.signalingState = 'have-local-offer';
    } else if (d.type === 'answer' || d.type === 'pranswer') {
      if (!['have-remote-offer', 'have-local-pranswer'].includes(this.signalingState)) {
        throw domError('InvalidStateError', `local answer in state ${this.signalingState}`);
      }
      this._settle(d, this.pendingRemoteDescription, d.type === 'pranswer', 'local');
    } else if (d.type === 'rollback') {
      this.pendingLocalDescription = null;
      this.signalingState = 'stable';
    } else {
      throw new TypeError(`bad description type ${d.type}`);
    }
    this.localDescription = this.pendingLocalDescription ?? this.currentLocalDescription;
    this._fire('signalingstatechange');
  }

  async setRemoteDescription(desc) {
    this._checkOpen();
    const d = new FakeRTCSessionDescription(desc);
    if (typeof d.sdp !== 'string' || !d.sdp.startsWith('v=0')) {
      throw domError('OperationError', 'remote description is not an SDP body');
    }
    if (d.type === 'offer') {
      if (!['stable', 'have-remote-offer'].includes(this.signalingState)) {
        throw domError('InvalidStateError', `remote offer in state ${this.signalingState}`);
      }
      this.pendingRemoteDescription = d;
      this.signalingState = 'have-remote-offer';
    } else if (d.type === 'answer' || d.type === 'pranswer') {
      if (!['have-local-offer', 'have-remote-pranswer'].includes(this.signalingState)) {
        throw domError('InvalidStateError', `remote answer in state ${this.signalingState}`);
      }
      this._settle(this.pendingLocalDescription, d, d.type === 'pranswer', 'remote');
    } else if (d.type === 'rollback') {
      this.pendingRemoteDescription = null;
      this.signalingState = 'stable';
    } else {
      throw new TypeError(`bad description type ${d.type}`);
    }
    this.remoteDescription = this.pendingRemoteDescription ?? this.currentRemoteDescription;
    this._fire('signalingstatechange');
  }

  _settle(local, remote, provisional, answerer) {
    if (provisional) {
      this.signalingState = answerer === 'local' ? 'have-local-pranswer' : 'have-remote-pranswer';
      if (answerer === 'local') this.pendingLocalDescription = local;
      else this.pendingRemoteDescription = remote;
      return;
    }
    this.currentLocalDescription = local;
    this.currentRemoteDescription = remote;
    this.pendingLocalDescription = null;
    this.pendingRemoteDescription = null;
    this.localDescription = local;
    this.remoteDescription = remote;
    this.signalingState = 'stable';
  }

  _fire(type) {
    const ev = new Event(type);
    this.dispatchEvent(ev);
    const handler = this[`on${type}`];
    if (typeof handler === 'function') handler.call(this, ev);
  }

  addTrack(track, ...streams) {
    this._checkOpen();
    this._tracks.push({ track, streams });
    // Recorded only: no RTCRtpSender exists without a media stack, so getSenders() stays empty.
    return { track, dtmf: null, replaceTrack: async () => {}, getParameters: () => ({}) };
  }

  removeTrack() {}

  getSenders() {
    return [];
  }

  getReceivers() {
    return [];
  }

  getTransceivers() {
    return [];
  }

  getLocalStreams() {
    return [];
  }

  getRemoteStreams() {
    return [];
  }

  async addIceCandidate() {}

  restartIce() {}

  async getStats() {
    return new Map();
  }

  close() {
    if (this.signalingState === 'closed') return;
    this.signalingState = 'closed';
    this.iceConnectionState = 'closed';
    this.connectionState = 'closed';
  }
}

/** Install the stand-ins as the globals JsSIP looks for (window.RTCPeerConnection etc.). */
export function installWebRtcShim() {
  if (typeof globalThis.window === 'undefined') globalThis.window = globalThis;
  globalThis.RTCPeerConnection = FakeRTCPeerConnection;
  globalThis.RTCSessionDescription = FakeRTCSessionDescription;
  globalThis.MediaStream = FakeMediaStream;
  globalThis.MediaStreamTrack = FakeMediaStreamTrack;
}
