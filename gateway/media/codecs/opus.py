"""Opus via a direct ctypes binding to the system libopus (Debian ``libopus0``, ``libopus.so.0``).

Mono, one libopus state per object, encode and decode at a chosen PCM rate: 8000 when the
other leg is narrowband (G.711/G.729) so no resampler runs and encoding costs a third of
48 kHz, 48000 otherwise. The RTP clock is always 48 000 (RFC 7587 §4.1) whatever the PCM rate.

Hot path: each call is one C call on preallocated ctypes buffers plus one ``bytes`` for the
result; input ``bytes`` are passed to C without copying.

Loss handling (RFC 7587 §3.1, RFC 6716 §2.1.7): :meth:`OpusDecoder.conceal` runs libopus PLC
(``opus_decode`` with a NULL packet); :meth:`OpusDecoder.decode_fec` recovers a lost packet
from the in-band FEC (LBRR) data carried by the packet after it (``decode_fec=1``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
from typing import Any

from gateway.media.codecs.base import BYTES_PER_SAMPLE, CodecError, CodecUnavailable

LIBRARY_NAMES = ("libopus.so.0", "opus")
"""Tried in order: the Debian soname, then ``ctypes.util.find_library`` on the base name."""

RTP_CLOCK_RATE = 48000
"""Opus RTP timestamp clock, fixed whatever the PCM rate (RFC 7587 §4.1)."""
PCM_RATES = (8000, 12000, 16000, 24000, 48000)
"""Sample rates libopus encodes from and decodes to."""
FRAME_MS_CHOICES = (10, 20, 40, 60)
DEFAULT_FRAME_MS = 20
DEFAULT_COMPLEXITY = 5
NARROWBAND_FEC_BITRATE = 20000
"""Target bitrate (bit/s) used at pcm_rate 8000 with FEC on when none is given: libopus's
automatic narrowband rate (~11 kbit/s) is below the rate at which SILK adds LBRR (in-band
FEC) data, so FEC would silently do nothing. VBR keeps the average well below it."""
DEFAULT_PACKET_LOSS_PERC = 10
"""Expected loss (%) told to the encoder: with FEC on, it sizes the LBRR data it adds."""
MAX_PACKET_BYTES = 1275 * 3 + 7
"""Output buffer: a frame is at most 1275 bytes (RFC 6716 §3.2.1), a 60 ms packet holds
three, plus up to 7 bytes of TOC and framing."""
DTX_MAX_BYTES = 2
"""With DTX on, libopus marks a frame that need not be sent by making it this short or
shorter (opus_encode documentation: "1 or 2 bytes ... the packet does not need to be
transmitted")."""
MIN_BITRATE = 6000
MAX_BITRATE = 510000
"""Bounds of an Opus bitrate in bit/s (RFC 7587 §6.1 ``maxaveragebitrate``)."""
MAX_DECODE_MS = 120
"""Longest packet duration an Opus packet can carry (RFC 6716 §3.1)."""
PLC_STEP_SAMPLES_DIVISOR = 400
"""PLC/FEC lengths must be multiples of 2.5 ms: pcm_rate / 400 samples."""

# opus_defines.h (libopus 1.3)
OPUS_OK = 0
OPUS_APPLICATION_VOIP = 2048
OPUS_SET_BITRATE_REQUEST = 4002
OPUS_SET_MAX_BANDWIDTH_REQUEST = 4004
OPUS_SET_BANDWIDTH_REQUEST = 4008
OPUS_SET_COMPLEXITY_REQUEST = 4010
OPUS_SET_INBAND_FEC_REQUEST = 4012
OPUS_SET_PACKET_LOSS_PERC_REQUEST = 4014
OPUS_SET_DTX_REQUEST = 4016
OPUS_SET_VBR_REQUEST = 4006
OPUS_SET_SIGNAL_REQUEST = 4024
OPUS_GET_LOOKAHEAD_REQUEST = 4027
OPUS_SIGNAL_VOICE = 3001
BANDWIDTHS = {
    "narrowband": 1101,
    "mediumband": 1102,
    "wideband": 1103,
    "superwideband": 1104,
    "fullband": 1105,
}
"""Bandwidth names → OPUS_BANDWIDTH_* values."""

_lib: Any = None
_load_error: str | None = None


def _load() -> Any:
    """Load libopus once and declare the signatures used; raise CodecUnavailable if absent."""
    global _lib, _load_error
    if _lib is not None:
        return _lib
    if _load_error is not None:
        raise CodecUnavailable(_load_error)
    errors = []
    for name in LIBRARY_NAMES:
        path = name if name.startswith("lib") else ctypes.util.find_library(name)
        if path is None:
            continue
        try:
            lib = ctypes.CDLL(path)
        except OSError as exc:
            errors.append(str(exc))
            continue
        try:
            _declare(lib)
        except AttributeError as exc:
            errors.append(f"{path}: missing symbol ({exc})")
            continue
        _lib = lib
        return lib
    _load_error = "libopus not found (install Debian package libopus0): " + (
        "; ".join(errors) or "no library named opus"
    )
    raise CodecUnavailable(_load_error)


def _declare(lib: Any) -> None:
    c_int, c_int32, c_void_p, c_char_p = (
        ctypes.c_int,
        ctypes.c_int32,
        ctypes.c_void_p,
        ctypes.c_char_p,
    )
    p_int = ctypes.POINTER(c_int)
    lib.opus_encoder_create.argtypes = [c_int32, c_int, c_int, p_int]
    lib.opus_encoder_create.restype = c_void_p
    lib.opus_encoder_destroy.argtypes = [c_void_p]
    lib.opus_encoder_destroy.restype = None
    # opus_encoder_ctl is variadic; every request used here takes one int32 (or int32*).
    lib.opus_encoder_ctl.restype = c_int
    # (st, const opus_int16 *pcm, int frame_size, unsigned char *data, opus_int32 max_bytes)
    lib.opus_encode.argtypes = [c_void_p, c_char_p, c_int, c_void_p, c_int32]
    lib.opus_encode.restype = c_int32
    lib.opus_decoder_create.argtypes = [c_int32, c_int, p_int]
    lib.opus_decoder_create.restype = c_void_p
    lib.opus_decoder_destroy.argtypes = [c_void_p]
    lib.opus_decoder_destroy.restype = None
    # (st, const unsigned char *data, opus_int32 len, opus_int16 *pcm, int frame_size, int fec)
    lib.opus_decode.argtypes = [c_void_p, c_char_p, c_int32, c_void_p, c_int, c_int]
    lib.opus_decode.restype = c_int
    lib.opus_packet_get_nb_samples.argtypes = [c_char_p, c_int32, c_int32]
    lib.opus_packet_get_nb_samples.restype = c_int
    lib.opus_strerror.argtypes = [c_int]
    lib.opus_strerror.restype = c_char_p
    lib.opus_get_version_string.argtypes = []
    lib.opus_get_version_string.restype = c_char_p


def available() -> str | None:
    """None when libopus loads, else the reason it does not (for the caller to log)."""
    try:
        _load()
    except CodecUnavailable as exc:
        return str(exc)
    return None


def version() -> str:
    """libopus version string, e.g. ``libopus 1.3.1``."""
    return str(_load().opus_get_version_string().decode())


def _strerror(lib: Any, code: int) -> str:
    return f"{lib.opus_strerror(code).decode()} ({code})"


def _check_rate(pcm_rate: int, frame_ms: int) -> None:
    if pcm_rate not in PCM_RATES:
        raise CodecError(f"Opus pcm_rate {pcm_rate} not one of {PCM_RATES}")
    if frame_ms not in FRAME_MS_CHOICES:
        raise CodecError(f"Opus frame_ms {frame_ms} not one of {FRAME_MS_CHOICES}")


class OpusEncoder:
    """Mono Opus encoder (application VOIP) taking s16le PCM at ``pcm_rate``."""

    name = "opus"
    clock_rate = RTP_CLOCK_RATE

    def __init__(
        self,
        *,
        pcm_rate: int = 48000,
        frame_ms: int = DEFAULT_FRAME_MS,
        bitrate: int | None = None,
        complexity: int = DEFAULT_COMPLEXITY,
        fec: bool = True,
        packet_loss_perc: int = DEFAULT_PACKET_LOSS_PERC,
        dtx: bool = False,
        bandwidth: str | None = None,
        max_bandwidth: str | None = None,
        signal_voice: bool = True,
        cbr: bool = False,
    ) -> None:
        """Create the libopus state; ``bitrate`` None leaves libopus's automatic choice
        (except NARROWBAND_FEC_BITRATE at 8 kHz with FEC on).

        ``bandwidth`` forces an audio bandwidth, ``max_bandwidth`` caps it (use it for the
        SDP ``maxplaybackrate`` of RFC 7587 §6.1); both take the keys of BANDWIDTHS.
        ``dtx`` and ``cbr`` follow the receiver's ``usedtx``/``cbr`` (see
        :func:`encoder_options_from_fmtp`); with DTX, packets of :data:`DTX_MAX_BYTES` or
        fewer need not be sent.
        """
        _check_rate(pcm_rate, frame_ms)
        lib = _load()
        self.pcm_rate = pcm_rate
        self.frame_ms = frame_ms
        self._lib = lib
        self._frame_samples = pcm_rate * frame_ms // 1000
        self._frame_bytes = self._frame_samples * BYTES_PER_SAMPLE
        err = ctypes.c_int(0)
        st = lib.opus_encoder_create(pcm_rate, 1, OPUS_APPLICATION_VOIP, ctypes.byref(err))
        if err.value != OPUS_OK or not st:  # pragma: no cover - only on allocation failure
            raise CodecError(f"opus_encoder_create: {_strerror(lib, err.value)}")
        self._st: int | None = st
        self._out = ctypes.create_string_buffer(MAX_PACKET_BYTES)
        self._out_addr = ctypes.addressof(self._out)
        self._encode = lib.opus_encode
        self._string_at = ctypes.string_at
        self._ctl(OPUS_SET_COMPLEXITY_REQUEST, complexity)
        self._ctl(OPUS_SET_INBAND_FEC_REQUEST, int(fec))
        self._ctl(OPUS_SET_PACKET_LOSS_PERC_REQUEST, packet_loss_perc)
        self._ctl(OPUS_SET_DTX_REQUEST, int(dtx))
        if cbr:
            self._ctl(OPUS_SET_VBR_REQUEST, 0)
        if bitrate is None and fec and pcm_rate == 8000:
            bitrate = NARROWBAND_FEC_BITRATE
        # The settings in force, for reports and tests (None bitrate: libopus's choice).
        self.fec = fec
        self.dtx = dtx
        self.cbr = cbr
        self.bitrate = bitrate
        self.max_bandwidth = max_bandwidth
        if bitrate is not None:
            self._ctl(OPUS_SET_BITRATE_REQUEST, bitrate)
        if signal_voice:
            self._ctl(OPUS_SET_SIGNAL_REQUEST, OPUS_SIGNAL_VOICE)
        if bandwidth is not None:
            self._ctl(OPUS_SET_BANDWIDTH_REQUEST, _bandwidth(bandwidth))
        if max_bandwidth is not None:
            self._ctl(OPUS_SET_MAX_BANDWIDTH_REQUEST, _bandwidth(max_bandwidth))

    def _ctl(self, request: int, value: int) -> None:
        ret = self._lib.opus_encoder_ctl(
            ctypes.c_void_p(self._st), ctypes.c_int(request), ctypes.c_int32(value)
        )
        if ret != OPUS_OK:
            raise CodecError(f"opus_encoder_ctl({request}, {value}): {_strerror(self._lib, ret)}")

    @property
    def lookahead(self) -> int:
        """Encoder delay in samples at ``pcm_rate`` (OPUS_GET_LOOKAHEAD)."""
        value = ctypes.c_int32(0)
        ret = self._lib.opus_encoder_ctl(
            ctypes.c_void_p(self._st),
            ctypes.c_int(OPUS_GET_LOOKAHEAD_REQUEST),
            ctypes.byref(value),
        )
        if ret != OPUS_OK:  # pragma: no cover - a valid encoder always answers
            raise CodecError(f"OPUS_GET_LOOKAHEAD: {_strerror(self._lib, ret)}")
        return value.value

    def encode(self, pcm: bytes) -> bytes:
        """Encode exactly one frame (``frame_ms`` at ``pcm_rate``) to one Opus packet."""
        if len(pcm) != self._frame_bytes:
            raise CodecError(f"Opus encoder wants {self._frame_bytes} PCM bytes, got {len(pcm)}")
        n = self._encode(self._st, pcm, self._frame_samples, self._out_addr, MAX_PACKET_BYTES)
        if n < 0:  # pragma: no cover - frame size and buffer are checked above
            raise CodecError(f"opus_encode: {_strerror(self._lib, n)}")
        return self._string_at(self._out_addr, n)

    def close(self) -> None:
        """Free the libopus state (also done when the object is collected)."""
        st, self._st = self._st, None
        self._encode = _closed
        if st:
            self._lib.opus_encoder_destroy(st)

    def __del__(self) -> None:
        if getattr(self, "_st", None):
            self.close()


class OpusDecoder:
    """Mono Opus decoder producing s16le PCM at ``pcm_rate``, with PLC and FEC recovery."""

    name = "opus"
    clock_rate = RTP_CLOCK_RATE

    def __init__(self, *, pcm_rate: int = 48000, frame_ms: int = DEFAULT_FRAME_MS) -> None:
        """Create the libopus state; ``frame_ms`` is the expected packet duration."""
        _check_rate(pcm_rate, frame_ms)
        lib = _load()
        self.pcm_rate = pcm_rate
        self.frame_ms = frame_ms
        self._lib = lib
        self._max_samples = pcm_rate * MAX_DECODE_MS // 1000
        self._plc_step = pcm_rate // PLC_STEP_SAMPLES_DIVISOR
        err = ctypes.c_int(0)
        st = lib.opus_decoder_create(pcm_rate, 1, ctypes.byref(err))
        if err.value != OPUS_OK or not st:  # pragma: no cover - only on allocation failure
            raise CodecError(f"opus_decoder_create: {_strerror(lib, err.value)}")
        self._st: int | None = st
        self._out = (ctypes.c_int16 * self._max_samples)()
        self._out_addr = ctypes.addressof(self._out)
        self._decode = lib.opus_decode
        self._string_at = ctypes.string_at

    def decode(self, payload: bytes) -> bytes:
        """Decode one Opus packet (RFC 7587 payload) to PCM."""
        if not payload:
            raise CodecError("empty Opus payload")
        n = self._decode(self._st, payload, len(payload), self._out_addr, self._max_samples, 0)
        if n < 0:
            raise CodecError(f"opus_decode: {_strerror(self._lib, n)}")
        return self._string_at(self._out_addr, n * BYTES_PER_SAMPLE)

    def conceal(self, samples: int) -> bytes:
        """libopus PLC for ``samples`` samples (a multiple of 2.5 ms at ``pcm_rate``)."""
        return self._run(None, 0, samples, 0)

    def decode_fec(self, next_payload: bytes, samples: int | None = None) -> bytes:
        """Recover the packet lost just before ``next_payload`` from its in-band FEC data.

        ``samples`` is the lost packet's duration at ``pcm_rate`` (default: the duration of
        ``next_payload``). When ``next_payload`` carries no FEC, libopus falls back to PLC.
        Call :meth:`decode` on ``next_payload`` afterwards as usual.
        """
        if not next_payload:
            raise CodecError("empty Opus payload")
        if samples is None:
            samples = self.packet_samples(next_payload)
        return self._run(next_payload, len(next_payload), samples, 1)

    def packet_samples(self, payload: bytes) -> int:
        """Duration of an Opus packet in samples at ``pcm_rate`` (RFC 6716 §3.1 TOC)."""
        n = self._lib.opus_packet_get_nb_samples(payload, len(payload), self.pcm_rate)
        if n < 0:
            raise CodecError(f"opus_packet_get_nb_samples: {_strerror(self._lib, n)}")
        return int(n)

    def _run(self, data: bytes | None, length: int, samples: int, fec: int) -> bytes:
        if samples <= 0 or samples % self._plc_step or samples > self._max_samples:
            raise CodecError(
                f"Opus PLC/FEC length {samples} must be a positive multiple of "
                f"{self._plc_step} up to {self._max_samples}"
            )
        n = self._decode(self._st, data, length, self._out_addr, samples, fec)
        if n < 0:
            raise CodecError(f"opus_decode: {_strerror(self._lib, n)}")
        return self._string_at(self._out_addr, n * BYTES_PER_SAMPLE)

    def close(self) -> None:
        """Free the libopus state (also done when the object is collected)."""
        st, self._st = self._st, None
        self._decode = _closed
        if st:
            self._lib.opus_decoder_destroy(st)

    def __del__(self) -> None:
        if getattr(self, "_st", None):
            self.close()


def _closed(*_args: object) -> int:
    # Installed in place of the C call by close(): a NULL state would crash libopus.
    raise CodecError("Opus codec used after close()")


def _bandwidth(name: str) -> int:
    try:
        return BANDWIDTHS[name]
    except KeyError:
        raise CodecError(f"Opus bandwidth {name!r} not one of {sorted(BANDWIDTHS)}") from None


def encoder_options_from_fmtp(fmtp: str | None) -> dict[str, Any]:
    """:class:`OpusEncoder` options that honour the *receiver's* ``a=fmtp`` (RFC 7587 §6.1).

    The parameters describe what the receiver wants from the sender: ``useinbandfec=1``
    (it decodes in-band FEC: encode it; absent means 0), ``usedtx=1`` (send DTX),
    ``cbr=1`` (constant bitrate), ``maxaveragebitrate`` (cap, clamped to 6000-510000) and
    ``maxplaybackrate`` (no point coding wider audio than it plays: ``max_bandwidth``).
    Returns the keys ``fec``, ``dtx``, ``cbr`` and, when given, ``max_bitrate`` and
    ``max_bandwidth``. Unknown or malformed parameters are ignored (§6.1: "the receiver
    ... MUST ignore" what it does not understand), never raised.
    """
    params: dict[str, str] = {}
    for part in (fmtp or "").split(";"):
        name, sep, value = part.partition("=")
        if sep:
            params[name.strip().lower()] = value.strip()
    options: dict[str, Any] = {
        "fec": params.get("useinbandfec") == "1",
        "dtx": params.get("usedtx") == "1",
        "cbr": params.get("cbr") == "1",
    }
    rate = params.get("maxaveragebitrate", "")
    if rate.isdigit():
        options["max_bitrate"] = min(max(int(rate), MIN_BITRATE), MAX_BITRATE)
    playback = params.get("maxplaybackrate", "")
    if playback.isdigit():
        # RFC 7587 §6.1 / RFC 6716 §2: 8 kHz is narrowband, 12 mediumband, 16 wideband,
        # 24 super-wideband, above that fullband.
        hz = int(playback)
        for limit, name in ((8000, "narrowband"), (12000, "mediumband"), (16000, "wideband")):
            if hz <= limit:
                options["max_bandwidth"] = name
                break
        else:
            options["max_bandwidth"] = "superwideband" if hz <= 24000 else "fullband"
    return options
