"""Per-leg SRTP/SRTCP contexts (pylibsrtp) keyed from a DTLS-SRTP export (RFC 5764 §4.2).

One libsrtp session per direction: ``tx`` protects what the gateway sends to the browser,
``rx`` authenticates and decrypts what it receives. Replay window 1024 packets; repeated
transmission of the same (SSRC, seq) is allowed on the sending side because passthrough may
forward a packet the far end retransmitted.
"""

from __future__ import annotations

import pylibsrtp

from gateway.media.dtls import SrtpKeys

__all__ = ["SrtpPair", "REPLAY_WINDOW"]

REPLAY_WINDOW = 1024
"""libsrtp replay window (packets) for both directions."""


class SrtpPair:
    """Protect/unprotect functions for one WebRTC leg (raise :class:`pylibsrtp.Error`)."""

    def __init__(self, keys: SrtpKeys) -> None:
        self.profile_name = keys.profile.openssl_name.decode()
        rx_policy = pylibsrtp.Policy(
            key=keys.rx,
            ssrc_type=pylibsrtp.Policy.SSRC_ANY_INBOUND,
            srtp_profile=keys.profile.libsrtp_profile,
        )
        rx_policy.window_size = REPLAY_WINDOW
        tx_policy = pylibsrtp.Policy(
            key=keys.tx,
            ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND,
            srtp_profile=keys.profile.libsrtp_profile,
        )
        tx_policy.allow_repeat_tx = True
        tx_policy.window_size = REPLAY_WINDOW
        self._rx = pylibsrtp.Session(rx_policy)
        self._tx = pylibsrtp.Session(tx_policy)
        # Bound methods, looked up once for the hot path.
        self.protect = self._tx.protect
        self.protect_rtcp = self._tx.protect_rtcp
        self.unprotect = self._rx.unprotect
        self.unprotect_rtcp = self._rx.unprotect_rtcp
