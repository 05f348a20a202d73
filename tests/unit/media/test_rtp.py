"""RTP/RTCP header parsing and in-place rewriting, with uint16/uint32 wrap-around."""

from __future__ import annotations

import struct

import pytest

from gateway.media.rtp import (
    PT_DROP,
    StreamRewriter,
    map_rtcp,
    parse_header,
    payload_offset,
    pt_map_from_dict,
    rtcp_sender_ssrc,
    seq_add,
    seq_diff,
    ts_add,
    ts_diff,
)


def rtp(
    seq: int, ts: int, ssrc: int, pt: int = 0, marker: int = 0, payload: bytes = b"\xff" * 160
) -> bytes:
    return struct.pack("!BBHII", 0x80, (marker << 7) | pt, seq, ts, ssrc) + payload


def test_parse_header_fields() -> None:
    assert parse_header(rtp(65535, 2**32 - 1, 0xDEADBEEF, pt=8, marker=1)) == (
        1,
        8,
        65535,
        2**32 - 1,
        0xDEADBEEF,
    )


def test_parse_header_errors() -> None:
    with pytest.raises(ValueError, match="too short"):
        parse_header(rtp(1, 1, 1)[:11])
    with pytest.raises(ValueError, match="version 1 is not 2"):
        parse_header(b"\x40" + rtp(1, 1, 1)[1:])


def test_payload_offset_with_csrcs_and_extension() -> None:
    plain = rtp(1, 2, 3)
    assert payload_offset(plain) == 12
    # Two CSRCs and a one-word header extension (RFC 3550 §5.3.1).
    ext = bytes([0x92]) + plain[1:12] + b"\0" * 8 + b"\xbe\xde\x00\x01" + b"\0" * 4 + b"pay"
    assert payload_offset(ext) == 12 + 8 + 4 + 4
    assert payload_offset(ext[:26]) == -1  # extension claims more than is there
    assert payload_offset(bytes([0x92]) + plain[1:12] + b"\0" * 8 + b"\xbe") == -1
    assert payload_offset(plain[:11]) == -1
    assert payload_offset(b"\x40" + plain[1:]) == -1


def test_wraparound_arithmetic() -> None:
    assert seq_add(65535, 1) == 0
    assert seq_diff(0, 65535) == 1
    assert seq_diff(65535, 0) == -1
    assert seq_diff(100, 100) == 0
    assert ts_add(2**32 - 80, 160) == 80
    assert ts_diff(80, 2**32 - 80) == 160
    assert ts_diff(2**32 - 80, 80) == -160


def test_rewriter_maps_ssrc_and_keeps_first_stream_numbering_across_wrap() -> None:
    rw = StreamRewriter(0x11111111)
    out = []
    for i in range(4):
        buf = bytearray(rtp((65534 + i) & 0xFFFF, (2**32 - 320 + 160 * i) & 0xFFFFFFFF, 0xAAAA))
        assert rw.rewrite(buf)
        out.append(parse_header(buf))
    assert [h[2] for h in out] == [65534, 65535, 0, 1]
    assert [h[3] for h in out] == [2**32 - 320, 2**32 - 160, 0, 160]
    assert {h[4] for h in out} == {0x11111111}
    assert rw.ssrc_changes == 0


def test_rewriter_continues_output_across_an_ssrc_change() -> None:
    rw = StreamRewriter(0x22222222)
    buf = bytearray(rtp(65535, 2**32 - 160, 0xAAAA))
    rw.rewrite(buf)
    # The far end re-anchors: new SSRC, unrelated numbering.
    buf = bytearray(rtp(1000, 5000, 0xBBBB, marker=1))
    assert rw.rewrite(buf)
    marker, _pt, seq, ts, ssrc = parse_header(buf)
    assert (seq, ts, ssrc) == (0, 0, 0x22222222)  # one packet after 65535 / 2^32-160
    assert marker == 1
    buf = bytearray(rtp(1001, 5160, 0xBBBB))
    rw.rewrite(buf)
    assert parse_header(buf)[2:] == (1, 160, 0x22222222)
    assert rw.ssrc_changes == 1
    assert buf[12:] == b"\xff" * 160  # payload untouched


def test_payload_type_map_renumbers_and_drops_unmapped() -> None:
    rw = StreamRewriter(1)
    rw.pt_map = pt_map_from_dict({0: 0, 101: 126})
    buf = bytearray(rtp(1, 1, 9, pt=101, marker=1))
    assert rw.rewrite(buf)
    assert parse_header(buf)[:2] == (1, 126)  # marker kept
    buf = bytearray(rtp(2, 2, 9, pt=8))
    before = bytes(buf)
    assert not rw.rewrite(buf)
    assert bytes(buf) == before
    assert pt_map_from_dict({})[8] == 8  # empty: identity
    assert pt_map_from_dict({0: 0})[8] == PT_DROP
    with pytest.raises(ValueError, match="outside 0-127"):
        pt_map_from_dict({0: 128})


def _rr(sender: int, blocks: list[tuple[int, int]]) -> bytes:
    body = b"".join(struct.pack("!IIIIII", s, 0, ext, 0, 0, 0) for s, ext in blocks)
    return struct.pack("!BBHI", 0x80 | len(blocks), 201, 1 + 6 * len(blocks), sender) + body


def test_rtcp_mapping_of_sr_rr_sdes_bye_and_feedback() -> None:
    fwd = StreamRewriter(0xF0F0F0F0)  # direction this RTCP travels
    rev = StreamRewriter(0x0E0E0E0E)  # the reverse direction (whose stream is reported on)
    fwd.rewrite(bytearray(rtp(10, 1000, 0xAAAA)))
    rev.rewrite(bytearray(rtp(500, 7000, 0xBBBB)))
    rev.rewrite(bytearray(rtp(600, 9000, 0xCCCC)))  # SSRC change: rev.seq_off != 0
    assert rev.seq_off != 0
    sr = struct.pack("!BBHIIIIII", 0x81, 200, 12, 0xAAAA, 1, 2, 1234, 5, 6) + struct.pack(
        "!IIIIII", 0x0E0E0E0E, 0, (1 << 16) | ((600 + rev.seq_off) & 0xFFFF), 0, 0, 0
    )
    sdes = struct.pack("!BBHI", 0x81, 202, 2, 0xAAAA) + b"\x01\x02ab"  # CNAME "ab", end
    bye = struct.pack("!BBHI", 0x81, 203, 1, 0xAAAA)
    fb = struct.pack("!BBHII", 0x81, 205, 2, 0xAAAA, 0x0E0E0E0E)
    app = struct.pack("!BBHI", 0x80, 204, 2, 0xAAAA) + b"name"
    buf = bytearray(sr + sdes + bye + fb + app)
    assert map_rtcp(buf, fwd, rev)
    assert rtcp_sender_ssrc(buf) == 0xF0F0F0F0
    assert struct.unpack_from("!I", buf, 16)[0] == 1234 + fwd.ts_off
    block = struct.unpack_from("!III", buf, 28)
    assert block[0] == 0xCCCC  # reportee back to the original SSRC
    assert block[2] == (1 << 16) | 600  # extended highest seq back in the original space
    off = len(sr)
    assert struct.unpack_from("!I", buf, off + 4)[0] == 0xF0F0F0F0  # SDES chunk
    off += len(sdes)
    assert struct.unpack_from("!I", buf, off + 4)[0] == 0xF0F0F0F0  # BYE
    off += len(bye)
    assert struct.unpack_from("!II", buf, off + 4) == (0xF0F0F0F0, 0xCCCC)  # RTPFB
    off += len(fb)
    assert struct.unpack_from("!I", buf, off + 4)[0] == 0xF0F0F0F0  # APP


def test_rtcp_unknown_ssrcs_pass_unchanged() -> None:
    fwd, rev = StreamRewriter(1), StreamRewriter(2)
    rr = _rr(0x9999, [(0x7777, 5)])
    buf = bytearray(rr)
    assert map_rtcp(buf, fwd, rev)
    assert bytes(buf) == rr


@pytest.mark.parametrize(
    "packet",
    [
        b"",
        b"\x80\xc9\x00",
        b"\x40\xc9\x00\x01\x00\x00\x00\x01",  # version 1
        b"\x80\xc9\x00\x05\x00\x00\x00\x01",  # length beyond the datagram
        b"\x81\xc9\x00\x01\x00\x00\x00\x01",  # RR claims a block it does not carry
        b"\x82\xcb\x00\x01\x00\x00\x00\x01",  # BYE claims two sources, carries one
        b"\x81\xcd\x00\x01\x00\x00\x00\x01",  # RTPFB without media SSRC
        b"\x81\xca\x00\x00",  # SDES chunk missing
        b"\x81\xca\x00\x02\x00\x00\x00\x01\x01\x09ab",  # SDES item runs past the packet
    ],
)
def test_malformed_rtcp_is_rejected(packet: bytes) -> None:
    assert not map_rtcp(bytearray(packet), StreamRewriter(1), StreamRewriter(2))


def test_every_truncation_of_a_compound_rtcp_is_rejected_or_mapped() -> None:
    packet = _rr(0xAAAA, [(2, 0)]) + struct.pack("!BBHI", 0x81, 203, 1, 0xAAAA)
    for n in range(len(packet)):
        result = map_rtcp(bytearray(packet[:n]), StreamRewriter(1), StreamRewriter(2))
        # Only a cut exactly between the two packets is itself a valid compound packet.
        assert result == (n == 32)
    assert rtcp_sender_ssrc(packet[:7]) == -1
