// A browser-shaped global WebSocket for Node, built on the `ws` package, for JsSIP's
// WebSocketInterface (which calls `new WebSocket(url, 'sip')`, RFC 7118 §4).
//
// Test-only differences from a browser:
//   * wss:// accepts self-signed certificates (rejectUnauthorized: false): test gateways run
//     with throw-away certificates on loopback.
//   * every live socket is kept in `liveSockets`, so a test can drop one abruptly with
//     `dropAll()` (ws.terminate(): the TCP connection is destroyed, no close frame is sent, the
//     peer sees close code 1006, RFC 6455 §7.1.5).
//   * optional hooks see every text message sent and received (SIP tracing).

import { WebSocket as NodeWebSocket } from 'ws';

/** Sockets that are connecting or open. */
export const liveSockets = new Set();

/** Hooks set by the driver: (url, data) => void. */
export const hooks = { onSend: null, onReceive: null };

function asText(data) {
  if (typeof data === 'string') return data;
  if (data instanceof ArrayBuffer) return Buffer.from(data).toString('utf8');
  if (ArrayBuffer.isView(data)) return Buffer.from(data.buffer, data.byteOffset, data.byteLength).toString('utf8');
  return String(data);
}

/** Browser-like WebSocket: `new WebSocket(url, protocols)`. */
export class BrowserLikeWebSocket extends NodeWebSocket {
  constructor(url, protocols) {
    super(url, protocols, { rejectUnauthorized: false, handshakeTimeout: 10_000 });
    liveSockets.add(this);
    this.addEventListener('close', () => liveSockets.delete(this));
    this.addEventListener('message', (ev) => {
      if (hooks.onReceive) hooks.onReceive(this.url, asText(ev.data));
    });
  }

  send(data, ...rest) {
    if (hooks.onSend) hooks.onSend(this.url, asText(data));
    return super.send(data, ...rest);
  }
}

/** Abruptly destroy every open socket (no close frame); returns how many were dropped. */
export function dropAll() {
  let dropped = 0;
  for (const sock of [...liveSockets]) {
    if (sock.readyState === NodeWebSocket.OPEN) {
      sock.terminate();
      dropped += 1;
    }
  }
  return dropped;
}

/** Make `globalThis.WebSocket` the browser-like class above. */
export function installWebSocketPolyfill() {
  globalThis.WebSocket = BrowserLikeWebSocket;
}
