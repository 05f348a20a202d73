"""RTCP packets, statistics and reports (RFC 3550 §6, §A.1, §A.3, §A.8)."""

from __future__ import annotations

import random
import struct

import pytest

from gateway.media.rtcp import (
    MAX_PACKETS,
    MAX_RTCP_SIZE,
    MAX_SR_HISTORY,
    NTP_UNIX_OFFSET,
    PT_PSFB,
    PT_RTPFB,
    SDES_CNAME,
    App,
    Bye,
    Feedback,
    LegRtcp,
    ReceiverReport,
    ReceiverStats,
    ReportBlock,
    RtcpError,
    SdesChunk,
    SenderReport,
    SenderStats,
    SourceDescription,
    clock_for_payload_type,
    ntp_from_unix,
    ntp_short,
    parse,
    serialize,
)


def rtp(
    seq: int, ts: int, ssrc: int = 0x1234, pt: int = 0, payload: bytes = b"\xd5" * 160
) -> bytes:
    return struct.pack("!BBHII", 0x80, pt, seq & 0xFFFF, ts & 0xFFFFFFFF, ssrc) + payload


# --------------------------------------------------------------------------- packets

#: An SR laid out field by field as in RFC 3550 §6.4.1: V=2 P=0 RC=1, PT=200, length 12
#: (13 words), sender SSRC, NTP timestamp (msw, lsw), RTP timestamp, packet and octet
#: counts, then one report block: SSRC_1, fraction lost | cumulative lost (24 bits signed),
#: extended highest sequence number, jitter, LSR, DLSR.
RFC3550_SR = bytes.fromhex(
    "81c8000c"  # V=2, P=0, RC=1 | PT=SR=200 | length=12
    "deadbeef"  # SSRC of sender
    "e8d4a510"  # NTP timestamp, most significant word
    "80000000"  # NTP timestamp, least significant word (0.5 s)
    "0001e240"  # RTP timestamp 123456
    "000003e8"  # sender's packet count 1000
    "00027100"  # sender's octet count 160000
    "cafef00d"  # SSRC_1
    "20fffffe"  # fraction lost 32/256 | cumulative lost -2
    "0001002a"  # extended highest sequence number: 1 cycle, seq 42
    "00000050"  # interarrival jitter 80
    "a5108000"  # LSR
    "00018000"  # DLSR 1.5 s
)


def test_sr_from_the_rfc_layout() -> None:
    (sr,) = parse(RFC3550_SR)
    assert sr == SenderReport(
        ssrc=0xDEADBEEF,
        ntp_timestamp=0xE8D4A510_80000000,
        rtp_timestamp=123456,
        packet_count=1000,
        octet_count=160000,
        reports=(
            ReportBlock(
                ssrc=0xCAFEF00D,
                fraction_lost=32,
                packets_lost=-2,
                highest_seq=0x1002A,
                jitter=80,
                lsr=0xA5108000,
                dlsr=0x18000,
            ),
        ),
    )
    assert serialize([sr]) == RFC3550_SR


COMPOUND = [
    SenderReport(1, 0x0102030405060708, 77, 3, 480, ()),
    ReceiverReport(2, (ReportBlock(3, 255, 0x7FFFFF, 5, 6, 7, 8),)),
    SourceDescription(
        (
            SdesChunk(1, ((SDES_CNAME, b"gw@example"), (2, b"Gateway"))),
            SdesChunk(9, ((SDES_CNAME, b"abc"),)),
        )
    ),
    Bye((1, 2), b"hang up"),
    App(3, 1, b"TEST", b"\x00\x01\x02\x03"),
    Feedback(PT_RTPFB, 1, 1, 2, b"\x00\x05\x00\x00"),  # generic NACK (RFC 4585 §6.2.1)
    Feedback(PT_PSFB, 1, 1, 2),  # PLI (RFC 4585 §6.3.1)
    Bye(()),
]


def test_compound_round_trip() -> None:
    data = serialize(COMPOUND)
    assert parse(data) == COMPOUND
    assert serialize(parse(data)) == data
    assert parse(data)[2].cname(9) == b"abc"  # type: ignore[union-attr]
    assert parse(data)[2].cname(4) is None  # type: ignore[union-attr]


def test_unknown_packet_types_are_skipped() -> None:
    xr = bytes.fromhex("80cf0002") + bytes(8)  # XR (RFC 3611), not understood here
    rr = serialize([ReceiverReport(5)])
    assert parse(xr + rr) == [ReceiverReport(5)]


def test_padding_only_on_the_last_packet() -> None:
    rr = serialize([ReceiverReport(5)])
    padded = bytes([rr[0] | 0x20, rr[1], 0, 2]) + rr[4:] + b"\x00\x00\x00\x04"
    assert parse(rr + padded) == [ReceiverReport(5), ReceiverReport(5)]
    with pytest.raises(RtcpError, match="invalid RTCP padding"):
        parse(padded + rr)
    with pytest.raises(RtcpError, match="invalid RTCP padding"):
        parse(padded[:-1] + b"\x00")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "RTCP datagram of 0 bytes is shorter than a header"),
        (b"\x81\xc9\x00", "RTCP datagram of 3 bytes is shorter than a header"),
        (b"\x41\xc9\x00\x01\x00\x00\x00\x00", "RTCP version 1 is not 2"),
        (b"\x81\xc9\x00\x07\x00\x00\x00\x00", "RTCP packet type 201 claims 32 of 8 bytes"),
        (b"\x81\xc9\x00\x01\x00\x00\x00\x00", "RR with 1 report blocks truncated"),
        (b"\x80\xc8\x00\x01\x00\x00\x00\x00", "SR with 0 report blocks truncated"),
        (b"\x82\xcb\x00\x01\x00\x00\x00\x01", "BYE with 2 sources truncated"),
        (b"\x81\xcb\x00\x02\x00\x00\x00\x01\x09abc", "BYE reason truncated"),
        (b"\x80\xcc\x00\x01\x00\x00\x00\x01", "APP packet truncated"),
        (b"\x81\xcd\x00\x01\x00\x00\x00\x01", "feedback packet truncated"),
        (b"\x81\xca\x00\x00", "SDES chunk truncated"),
        (b"\x81\xca\x00\x01\x00\x00\x00\x01", "SDES chunk without a null item"),
        (b"\x81\xca\x00\x02\x00\x00\x00\x01\x01\x09ab\x00", "SDES item truncated"),
        # padded (P=1, one octet): the null item's alignment runs into the padding
        (b"\xa1\xca\x00\x02\x00\x00\x00\x01\x01\x00\x00\x01", "SDES chunk padding truncated"),
        (serialize([ReceiverReport(1)]) + b"\x80", "1 stray bytes after the last RTCP packet"),
    ],
)
def test_malformed_packets_raise_rtcp_error(data: bytes, message: str) -> None:
    with pytest.raises(RtcpError) as exc:
        parse(data)
    assert str(exc.value) == message


def test_limits() -> None:
    rr = serialize([ReceiverReport(1)])
    assert len(parse(rr * MAX_PACKETS)) == MAX_PACKETS
    with pytest.raises(RtcpError, match=f"more than {MAX_PACKETS} packets"):
        parse(rr * (MAX_PACKETS + 1))
    big = bytes([0x80, 204, 0xFF, 0xFF]) + bytes(MAX_RTCP_SIZE)
    with pytest.raises(RtcpError, match=f"exceeds {MAX_RTCP_SIZE}"):
        parse(big)


def test_every_truncation_and_random_garbage_raise_only_rtcp_error() -> None:
    data = serialize(COMPOUND)
    boundaries = set()
    offset = 0
    while offset < len(data):
        offset += 4 * (struct.unpack_from("!H", data, offset + 2)[0] + 1)
        boundaries.add(offset)
    for cut in range(len(data)):
        if cut in boundaries:
            assert parse(data[:cut]) == COMPOUND[: len(parse(data[:cut]))]
        else:
            with pytest.raises(RtcpError):
                parse(data[:cut])
    # Mutations of the valid compound: some still parse, the rest raise RtcpError only.
    rng = random.Random(3550)
    outcomes = set()
    for _ in range(3000):
        blob = bytearray(data[: rng.randrange(len(data) + 1)])
        for _ in range(rng.randrange(1, 4)):
            if blob:
                blob[rng.randrange(len(blob))] = rng.randrange(256)
        try:
            parse(blob)
            outcomes.add("parsed")
        except RtcpError:
            outcomes.add("RtcpError")
    assert outcomes == {"parsed", "RtcpError"}


def test_serialize_rejects_what_does_not_fit() -> None:
    block = ReportBlock(1, 0, 0, 0, 0, 0, 0)
    with pytest.raises(RtcpError, match="32 report blocks exceed 31"):
        serialize([ReceiverReport(1, (block,) * 32)])
    with pytest.raises(RtcpError, match="does not fit 24 bits"):
        serialize([ReceiverReport(1, (ReportBlock(1, 0, 1 << 23, 0, 0, 0, 0),))])
    with pytest.raises(RtcpError, match="fraction lost 256"):
        serialize([ReceiverReport(1, (ReportBlock(1, 256, 0, 0, 0, 0, 0),))])
    with pytest.raises(RtcpError, match="SDES item 1 of 256 bytes"):
        serialize([SourceDescription((SdesChunk(1, ((1, bytes(256)),)),))])
    with pytest.raises(RtcpError, match="32 SDES chunks"):
        serialize([SourceDescription((SdesChunk(1, ()),) * 32)])
    with pytest.raises(RtcpError, match="BYE with too many"):
        serialize([Bye((1,) * 32)])
    with pytest.raises(RtcpError, match="APP needs"):
        serialize([App(0, 1, b"ABC")])
    with pytest.raises(RtcpError, match="feedback needs"):
        serialize([Feedback(PT_PSFB, 1, 1, 2, b"\x01")])
    with pytest.raises(RtcpError, match="exceeds"):
        serialize([App(0, 1, b"ABCD", bytes(MAX_RTCP_SIZE))])


def test_ntp_and_clock_helpers() -> None:
    assert ntp_from_unix(0.0) == NTP_UNIX_OFFSET << 32
    assert ntp_from_unix(1_700_000_000.25) == (1_700_000_000 + NTP_UNIX_OFFSET) << 32 | 1 << 30
    assert ntp_short(0x0123456789ABCDEF) == 0x456789AB
    assert [clock_for_payload_type(pt) for pt in (0, 8, 9, 18, 111)] == [
        8000,
        8000,
        8000,
        8000,
        48000,
    ]


# --------------------------------------------------------------------------- receiver


def feed(stats: ReceiverStats, seqs: list[int], *, start: float = 0.0, step_ts: int = 160) -> None:
    """Packets with the given sequence numbers, sent and arriving every 20 ms."""
    for seq in seqs:
        stats.on_rtp(rtp(seq, seq * step_ts), start + seq * 0.02)


def test_loss_cumulative_and_fraction_per_interval() -> None:
    stats = ReceiverStats()
    lost = {10, 11, 50}
    feed(stats, [s for s in range(100) if s not in lost])
    # §A.1: the first packet is probation; counting starts at the second (seq 1).
    assert (stats.expected, stats.received, stats.packets_lost) == (99, 96, 3)
    block = stats.report_block(2.0)
    assert block is not None
    assert (block.ssrc, block.packets_lost, block.highest_seq) == (0x1234, 3, 99)
    assert block.fraction_lost == 3 * 256 // 99
    # Next interval: 50 expected, 5 lost.
    feed(stats, [s for s in range(100, 150) if s % 10 != 3])
    block = stats.report_block(3.0)
    assert block is not None
    assert (block.packets_lost, block.fraction_lost) == (8, 5 * 256 // 50)
    assert stats.report_block(4.0) is None  # nothing heard since the last report
    assert stats.fraction_lost == 25 and stats.clock == 8000


def test_sequence_wrap_counts_a_cycle_and_reordering_is_not_loss() -> None:
    stats = ReceiverStats()
    seqs = list(range(65500, 65536)) + list(range(0, 40))
    seqs[50], seqs[51] = seqs[51], seqs[50]  # one swapped pair after the wrap
    for i, seq in enumerate(seqs):
        stats.on_rtp(rtp(seq, i * 160), i * 0.02)
    assert stats.extended_max == 65536 + 39
    assert stats.packets_lost == 0
    stats.on_rtp(rtp(39, 75 * 160), 2.0)  # a duplicate: counted, loss goes negative
    assert stats.packets_lost == -1


def test_sender_restart_and_new_ssrc_keep_cumulative_figures() -> None:
    stats = ReceiverStats()
    feed(stats, [0, 1, 2, 4, 5])  # one lost
    stats.on_rtp(rtp(30000, 0), 1.0)  # one big jump: ignored (§A.1 bad_seq)
    assert stats.max_seq == 5
    stats.on_rtp(rtp(30001, 160), 1.02)  # the next in sequence: the sender restarted
    stats.on_rtp(rtp(30003, 480), 1.06)
    assert (stats.base_seq, stats.packets_lost) == (30001, 2)
    stats.on_rtp(rtp(7, 0, ssrc=0x9999), 2.0)  # another source: probation again
    stats.on_rtp(rtp(8, 160, ssrc=0x9999), 2.02)
    stats.on_rtp(rtp(10, 480, ssrc=0x9999), 2.06)
    assert stats.ssrc == 0x9999 and stats.packets_lost == 3
    assert stats.packets_received == 4 + 2 + 2
    # Out of sequence during probation restarts it (§A.1).
    fresh = ReceiverStats()
    fresh.on_rtp(rtp(1, 0), 0.0)
    fresh.on_rtp(rtp(5, 0), 0.0)
    assert not fresh.valid and fresh.report_block(0.0) is None
    fresh.on_rtp(rtp(6, 0), 0.0)
    assert fresh.valid and fresh.received == 1


def test_jitter_matches_the_rfc_estimator_on_the_legs_clock() -> None:
    """Known transit variation: every packet delayed 0-10 ms at random; the §A.8 integer
    estimator must track the floating-point formula J += (|D| - J) / 16."""
    rng = random.Random(8)
    for clock, pt, start_ts in ((8000, 0, 2**32 - 20 * 160), (48000, 111, 12345)):
        stats = ReceiverStats()
        step = clock // 50
        expected = 0.0
        previous = None
        for i in range(400):
            ts = start_ts + i * step
            arrival = i * 0.02 + rng.uniform(0.0, 0.010)
            stats.on_rtp(rtp(i, ts, pt=pt), arrival)
            transit = arrival * clock - ts
            if i >= 1:  # the first packet is probation, the second sets the reference
                if previous is not None:
                    expected += (abs(transit - previous) - expected) / 16
                previous = transit
        assert stats.clock == clock
        assert stats.jitter_units == pytest.approx(expected, abs=2)
        jitter_ms = stats.jitter_units * 1000 / clock
        assert 2.0 < jitter_ms < 5.0  # uniform 0-10 ms delay: mean |D| is 3.3 ms


def test_constant_delay_has_no_jitter_even_across_a_timestamp_wrap() -> None:
    stats = ReceiverStats(clock=8000)
    for i in range(100):
        stats.on_rtp(rtp(i, 2**32 - 50 * 160 + i * 160, pt=111), 5.0 + i * 0.02 + 0.03)
    assert stats.jitter_units == 0 and stats.clock == 8000  # fixed clock, not from the PT


def test_report_block_carries_lsr_and_dlsr_of_the_last_sr() -> None:
    stats = ReceiverStats()
    feed(stats, range(10))  # type: ignore[arg-type]
    stats.on_sender_report(0x5555, 0x1111222233334444, 1.0)  # another source's SR
    block = stats.report_block(1.5)
    assert block is not None and (block.lsr, block.dlsr) == (0, 0)
    stats.on_sender_report(0x1234, 0x1111222233334444, 2.0)
    feed(stats, [10])
    block = stats.report_block(2.25)
    assert block is not None
    assert (block.lsr, block.dlsr) == (0x22223333, 65536 // 4)


# --------------------------------------------------------------------------- sender and leg


def test_sender_counts_payload_octets_and_extrapolates_the_timestamp() -> None:
    sender = SenderStats()
    sender.on_sent(rtp(1, 1000, payload=bytes(160)), 1.0)
    # CSRC count 1, header extension of one word, 3 padding octets: payload is 10 octets.
    packet = (
        struct.pack("!BBHII", 0xB1, 0, 2, 1160, 7)
        + b"CSRC"
        + b"\xbe\xde\x00\x01"
        + b"EXT!"
        + bytes(10)
        + b"\x00\x00\x03"
    )
    sender.on_sent(packet, 1.02)
    assert (sender.packets, sender.octets, sender.last_ts) == (2, 170, 1160)
    assert sender.rtp_timestamp_at(1.52, 8000) == 1160 + 4000
    assert sender.rtp_timestamp_at(1.52, 48000) == 1160 + 24000


def test_round_trip_time_from_lsr_and_dlsr() -> None:
    leg = LegRtcp()
    ntp = ntp_from_unix(1_700_000_000.0)
    leg.sender_report_sent(ntp, 10.0)
    # The peer held our SR 0.5 s before answering; the RR arrives 0.62 s after we sent it.
    rr = ReceiverReport(9, (ReportBlock(0xAAAA, 64, 12, 5, 80, ntp_short(ntp), 65536 // 2),))
    leg.receive([rr], local_ssrc=0xAAAA, now=10.62)
    assert leg.rtt == pytest.approx(0.12, abs=1e-4)
    assert (leg.remote_fraction_lost, leg.remote_packets_lost, leg.remote_jitter) == (64, 12, 80)
    stats = leg.stats()
    assert stats["rtt_ms"] == pytest.approx(120.0, abs=0.1)
    assert stats["remote_fraction_lost"] == 0.25 and stats["remote_packets_lost"] == 12
    assert stats["remote_jitter_ms"] is None and leg.clock == 0  # no clock known yet
    leg.set_clock(8000)
    assert leg.stats()["remote_jitter_ms"] == 10.0
    # A block about another SSRC, or an LSR we never sent, leaves the RTT as it was.
    other = ReceiverReport(9, (ReportBlock(0xBBBB, 255, 99, 5, 1, ntp_short(ntp), 0),))
    unknown = ReportBlock(0xAAAA, 0, 12, 5, 80, 0x12345678, 0)
    sr = SenderReport(9, ntp, 0, 0, 0, (unknown,))
    leg.receive([other, sr, Bye((9,))], local_ssrc=0xAAAA, now=11.0)
    assert leg.rtt == pytest.approx(0.12, abs=1e-4) and leg.reports_received == 2


def test_sr_history_is_bounded() -> None:
    leg = LegRtcp()
    for i in range(MAX_SR_HISTORY + 3):
        leg.sender_report_sent(i << 16, float(i))
    leg.receive([ReceiverReport(9, (ReportBlock(1, 0, 0, 0, 0, 0, 0),))], 1, 20.0)
    assert leg.rtt is None  # LSR 0 means "no SR received" (§6.4.1)
    first = ReportBlock(1, 0, 0, 0, 0, 1, 0)  # LSR of the second SR: forgotten by now
    leg.receive([ReceiverReport(9, (first,))], 1, 20.0)
    assert leg.rtt is None
    last = ReportBlock(1, 0, 0, 0, 0, MAX_SR_HISTORY + 2, 0)
    leg.receive([ReceiverReport(9, (last,))], 1, 20.0)
    assert leg.rtt == 20.0 - (MAX_SR_HISTORY + 2)


def test_report_schedule_is_randomised_around_the_interval() -> None:
    for value, first, then in ((0.0, 1.25, 2.5), (0.5, 2.5, 5.0), (0.999, 3.7475, 7.495)):
        leg = LegRtcp(rand=lambda v=value: v)  # type: ignore[misc]
        assert not leg.due(100.0)
        assert leg.next_report == pytest.approx(100.0 + first)
        assert not leg.due(100.0 + first - 0.01) and leg.due(100.0 + first)
        leg.make_report(ssrc=1, cname=b"x", now=200.0, wallclock=0.0)
        assert leg.next_report == pytest.approx(200.0 + then)


def test_report_is_sr_after_sending_else_rr_with_sdes_cname() -> None:
    leg = LegRtcp()
    leg.set_clock(8000)
    for seq in range(50):
        leg.receiver.on_rtp(rtp(seq, seq * 160, ssrc=0x5151), seq * 0.02)
    leg.receiver.on_sender_report(0x5151, ntp_from_unix(1_700_000_000.5), 0.5)
    for seq in range(40):
        leg.sender.on_sent(rtp(seq, 8000 + seq * 160, ssrc=0xA0A0), seq * 0.02)
    data = leg.make_report(ssrc=0xA0A0, cname=b"gw-cname", now=1.0, wallclock=1_700_000_001.0)
    sr, sdes = parse(data)
    assert isinstance(sr, SenderReport) and isinstance(sdes, SourceDescription)
    assert sr.ssrc == 0xA0A0 and (sr.packet_count, sr.octet_count) == (40, 40 * 160)
    assert sr.ntp_timestamp == ntp_from_unix(1_700_000_001.0)
    # Last packet: ts 8000 + 39*160 at 0.78 s; 0.22 s later on the 8000 clock.
    assert sr.rtp_timestamp == 8000 + 39 * 160 + 1760
    (block,) = sr.reports
    assert block.ssrc == 0x5151 and block.highest_seq == 49 and block.packets_lost == 0
    assert block.lsr == ntp_short(ntp_from_unix(1_700_000_000.5))
    assert block.dlsr == 65536 // 2
    assert sdes.cname(0xA0A0) == b"gw-cname"
    # Nothing sent or received since: an RR without report blocks, still with CNAME.
    rr, sdes = parse(leg.make_report(ssrc=0xA0A0, cname=b"gw-cname", now=6.0, wallclock=0.0))
    assert rr == ReceiverReport(0xA0A0, ())
    assert isinstance(sdes, SourceDescription) and sdes.cname(0xA0A0) == b"gw-cname"
    assert leg.reports_sent == 2
    stats = leg.stats()
    assert stats["packets_received"] == 49 and stats["packets_lost"] == 0
    assert stats["jitter_ms"] == 0.0 and stats["rtt_ms"] is None
