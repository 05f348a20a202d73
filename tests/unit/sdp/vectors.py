"""Access to the SDP vectors in tests/vectors/sdp (see its README.md for provenance)."""

from __future__ import annotations

from pathlib import Path

from gateway.sdp.model import SessionDescription, parse

VECTORS = Path(__file__).resolve().parents[2] / "vectors" / "sdp"
NAMES = sorted(p.name for p in VECTORS.glob("*.sdp"))


def text(name: str) -> str:
    """The vector exactly as stored (CRLF line ends kept)."""
    with open(VECTORS / name, encoding="utf-8", newline="") as f:
        return f.read()


def load(name: str) -> SessionDescription:
    """The vector, parsed."""
    return parse(text(name))
