"""Codec registry (gateway/media/codecs/__init__.py) and the codec layer's sans-I/O rule."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest

import gateway.media.codecs as codecs
from gateway.media.codecs import g729
from tests.unit.media.codecs.signals import (
    aligned,
    codec_delay,
    correlation,
    peak_frequency,
    sine,
    to_pcm,
)

FORBIDDEN_IMPORTS = {"asyncio", "socket", "time", "threading", "selectors"}


def test_available_codecs_on_this_machine() -> None:
    # libopus0 and libbcg729-0 are part of the machine setup: all four must be usable.
    assert codecs.available_codecs() == {"PCMU": None, "PCMA": None, "opus": None, "G729": None}
    assert codecs.codec_names() == ("PCMU", "PCMA", "opus", "G729")


def test_available_codecs_reports_reason_when_g729_missing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Simulates an absent bcg729 by pointing its loader at a name that does not exist."""
    monkeypatch.setattr(g729, "LIBRARY_NAMES", ("libbcg729-missing.so.0",))
    monkeypatch.setattr(g729, "_lib", None)
    monkeypatch.setattr(g729, "_load_error", None)
    status = codecs.available_codecs()
    assert status["PCMU"] is None and status["opus"] is None
    assert isinstance(status["G729"], str) and "bcg729 not found" in status["G729"]
    with pytest.raises(codecs.CodecUnavailable):
        codecs.get_decoder("G729")


@pytest.mark.parametrize(
    ("name", "opts", "clock_rate", "pcm_rate"),
    [
        ("PCMU", {}, 8000, 8000),
        ("pcma", {}, 8000, 8000),
        ("OPUS", {"pcm_rate": 8000}, 48000, 8000),
        ("opus", {}, 48000, 48000),
        ("g729", {}, 8000, 8000),
    ],
)
def test_get_encoder_and_decoder_by_sdp_name(
    name: str, opts: dict[str, int], clock_rate: int, pcm_rate: int
) -> None:
    enc = codecs.get_encoder(name, **opts)
    dec = codecs.get_decoder(name, **opts)
    assert isinstance(enc, codecs.Encoder) and isinstance(dec, codecs.Decoder)
    assert enc.name.upper() == dec.name.upper() == name.upper()
    assert (enc.clock_rate, enc.pcm_rate, dec.pcm_rate, enc.frame_ms) == (
        clock_rate,
        pcm_rate,
        pcm_rate,
        20,
    )
    frame = pcm_rate // 50
    pcm = dec.decode(enc.encode(bytes(frame * 2)))
    assert len(pcm) == frame * 2
    assert len(dec.conceal(frame)) == frame * 2


def test_options_reach_the_codec() -> None:
    enc = codecs.get_encoder("opus", pcm_rate=8000, frame_ms=40, complexity=0)
    assert (enc.pcm_rate, enc.frame_ms) == (8000, 40)
    assert codecs.get_decoder("G729", frame_ms=30).frame_ms == 30


def test_unknown_codec_name() -> None:
    with pytest.raises(codecs.CodecError, match="unknown codec 'G722'; known: PCMU, PCMA"):
        codecs.get_encoder("G722")
    with pytest.raises(codecs.CodecError, match="unknown codec 'iLBC'"):
        codecs.get_decoder("iLBC")


def test_transcode_chain_opus_to_pcmu_to_g729_keeps_the_tone() -> None:
    """Opus at 8 kHz → PCMU → G.729, frame by frame as the bridge would run it."""
    opus_enc = codecs.get_encoder("opus", pcm_rate=8000)
    opus_dec = codecs.get_decoder("opus", pcm_rate=8000)
    pcmu_enc, pcmu_dec = codecs.get_encoder("PCMU"), codecs.get_decoder("PCMU")
    g729_enc, g729_dec = codecs.get_encoder("G729"), codecs.get_decoder("G729")
    x = sine(1000, -10, 8000, 1.0)
    pcm = to_pcm(x)
    out = []
    for i in range(50):
        frame = pcm[i * 320 : (i + 1) * 320]
        narrow = opus_dec.decode(opus_enc.encode(frame))
        law = pcmu_dec.decode(pcmu_enc.encode(narrow))
        out.append(g729_dec.decode(g729_enc.encode(law)))
    y = np.frombuffer(b"".join(out), dtype="<i2").astype(np.float64)
    a, b = aligned(x, y, codec_delay(x, y, 160), skip=800)
    assert abs(peak_frequency(b, 8000) - 1000) < 2
    assert correlation(a, b) > 0.9


def test_codec_modules_do_no_io() -> None:
    """Cores are sans-I/O: no event loop, sockets, clocks or threads under codecs/."""
    package = Path(codecs.__file__).parent
    sources = sorted(package.glob("*.py"))
    assert {p.name for p in sources} >= {"base.py", "g711.py", "opus.py", "g729.py", "dtmf.py"}
    for source in sources:
        tree = ast.parse(source.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                names = {(node.module or "").split(".")[0]}
            else:
                continue
            assert not names & FORBIDDEN_IMPORTS, f"{source.name} imports {names}"
