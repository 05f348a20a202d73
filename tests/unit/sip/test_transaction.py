"""gateway.sip.transaction: the four RFC 3261 §17 state machines, matching, ACK/CANCEL.

Messages are RFC 3665 call-flow messages (Alice at atlanta.example.com calls Bob at
biloxi.example.com) parsed with gateway.sip.message; times run on a FakeClock that
starts at 1000 s, with the default T1 = 0.5 s, T2 = 4 s, T4 = 5 s.
"""

from __future__ import annotations

import pytest

from gateway.sip.errors import ParseError
from gateway.sip.events import (
    AckReceived,
    ResponseReceived,
    Terminated,
    Timeout,
    TransactionEvent,
)
from gateway.sip.headers import parse_via
from gateway.sip.message import Request, Response, make_response, parse
from gateway.sip.transaction import (
    INVITE_CLIENT,
    INVITE_SERVER,
    NON_INVITE_CLIENT,
    NON_INVITE_SERVER,
    ClientTransaction,
    ServerTransaction,
    SipTimers,
    State,
    cancel_target_key,
    client_key,
    make_ack,
    make_branch,
    make_cancel,
    server_key,
)
from tests.helpers.clock import FakeClock
from tests.helpers.pairs import LossyLink, TransactionPair

TIMERS = SipTimers()
START = 1000.0

SDP = (
    b"v=0\r\n"
    b"o=alice 2890844526 2890844526 IN IP4 client.atlanta.example.com\r\n"
    b"s=-\r\n"
    b"c=IN IP4 192.0.2.101\r\n"
    b"t=0 0\r\n"
    b"m=audio 49172 RTP/AVP 0\r\n"
    b"a=rtpmap:0 PCMU/8000\r\n"
)

# RFC 3665 §3.1 F1 style: Alice calls Bob.
INVITE = """\
INVITE sip:bob@biloxi.example.com SIP/2.0
Via: SIP/2.0/UDP client.atlanta.example.com:5060;branch=z9hG4bK74bf9
Max-Forwards: 70
From: Alice <sip:alice@atlanta.example.com>;tag=9fxced76sl
To: Bob <sip:bob@biloxi.example.com>
Call-ID: 3848276298220188511@atlanta.example.com
CSeq: 1 INVITE
Contact: <sip:alice@client.atlanta.example.com>
Content-Type: application/sdp
"""

# RFC 3665 §3.2 F4 style: the INVITE as proxy ss1 forwards it, with a pre-loaded route.
FORWARDED_INVITE = """\
INVITE sip:bob@biloxi.example.com SIP/2.0
Via: SIP/2.0/UDP ss1.atlanta.example.com:5060;branch=z9hG4bK2d4790.1
Via: SIP/2.0/UDP client.atlanta.example.com:5060;branch=z9hG4bK74bf9;received=192.0.2.101
Route: <sip:ss2.biloxi.example.com;lr>
Route: <sip:edge.biloxi.example.com;lr>
Record-Route: <sip:ss1.atlanta.example.com;lr>
Max-Forwards: 69
From: Alice <sip:alice@atlanta.example.com>;tag=9fxced76sl
To: Bob <sip:bob@biloxi.example.com>
Call-ID: 3848276298220188511@atlanta.example.com
CSeq: 1 INVITE
Contact: <sip:alice@client.atlanta.example.com>
Content-Type: application/sdp
"""

# RFC 3665 style: Alice's ACK for Bob's 486 (same branch, RFC 3261 §17.1.1.3).
ACK_FOR_486 = """\
ACK sip:bob@biloxi.example.com SIP/2.0
Via: SIP/2.0/UDP client.atlanta.example.com:5060;branch=z9hG4bK74bf9
Max-Forwards: 70
From: Alice <sip:alice@atlanta.example.com>;tag=9fxced76sl
To: Bob <sip:bob@biloxi.example.com>;tag=314159
Call-ID: 3848276298220188511@atlanta.example.com
CSeq: 1 ACK
"""

# RFC 3665 §3.1 style: Alice's ACK for Bob's 200, a transaction of its own (new branch).
ACK_FOR_200 = """\
ACK sip:bob@client.biloxi.example.com SIP/2.0
Via: SIP/2.0/UDP client.atlanta.example.com:5060;branch=z9hG4bK74bd5
Max-Forwards: 70
From: Alice <sip:alice@atlanta.example.com>;tag=9fxced76sl
To: Bob <sip:bob@biloxi.example.com>;tag=8321234356
Call-ID: 3848276298220188511@atlanta.example.com
CSeq: 1 ACK
"""

# RFC 3665 style: Alice cancels her INVITE.
CANCEL = """\
CANCEL sip:bob@biloxi.example.com SIP/2.0
Via: SIP/2.0/UDP client.atlanta.example.com:5060;branch=z9hG4bK74bf9
Max-Forwards: 70
From: Alice <sip:alice@atlanta.example.com>;tag=9fxced76sl
To: Bob <sip:bob@biloxi.example.com>
Call-ID: 3848276298220188511@atlanta.example.com
CSeq: 1 CANCEL
"""

# RFC 3665 §2.1 F1 style: Bob registers.
REGISTER = """\
REGISTER sips:ss2.biloxi.example.com SIP/2.0
Via: SIP/2.0/TLS client.biloxi.example.com:5061;branch=z9hG4bKnashds7
Max-Forwards: 70
From: Bob <sips:bob@biloxi.example.com>;tag=a73kszlfl
To: Bob <sips:bob@biloxi.example.com>
Call-ID: 1j9FpLxk3uxtm8tn@biloxi.example.com
CSeq: 1 REGISTER
Contact: <sips:bob@client.biloxi.example.com>
"""

# RFC 3665 §3.1 style: Bob hangs up (over UDP here).
BYE = """\
BYE sip:alice@client.atlanta.example.com SIP/2.0
Via: SIP/2.0/UDP client.biloxi.example.com:5060;branch=z9hG4bKnashds7
Max-Forwards: 70
From: Bob <sip:bob@biloxi.example.com>;tag=8321234356
To: Alice <sip:alice@atlanta.example.com>;tag=9fxced76sl
Call-ID: 3848276298220188511@atlanta.example.com
CSeq: 1 BYE
"""


def request(text: str, body: bytes = b"") -> Request:
    """Parse a message written with LF line ends (and no Content-Length)."""
    message = parse(text.replace("\n", "\r\n").encode() + b"\r\n" + body)
    assert isinstance(message, Request)
    return message


def invite() -> Request:
    return request(INVITE, SDP)


def answer(req: Request, status: int, to_tag: str | None = "314159") -> Response:
    """The response the far side sends, as it arrives off the wire."""
    if status == 100:
        to_tag = None
    message = parse(bytes(make_response(req, status, to_tag=to_tag)))
    assert isinstance(message, Response)
    return message


def events(txn: ClientTransaction | ServerTransaction) -> list[TransactionEvent]:
    out: list[TransactionEvent] = []
    while (event := txn.next_event()) is not None:
        out.append(event)
    return out


def statuses(evs: list[TransactionEvent]) -> list[int]:
    return [e.response.status for e in evs if isinstance(e, ResponseReceived)]


def client(req: Request, *, reliable: bool = False, now: float = START) -> ClientTransaction:
    return ClientTransaction(req, reliable=reliable, timers=TIMERS, now=now)


def server(req: Request, *, reliable: bool = False, now: float = START) -> ServerTransaction:
    return ServerTransaction(req, reliable=reliable, timers=TIMERS, now=now)


# ------------------------------------------------------------------ timers


def test_timer_defaults_follow_rfc3261_table_4() -> None:
    t = SipTimers()
    assert (t.t1, t.t2, t.t4) == (0.5, 4.0, 5.0)
    assert (t.timer_a, t.timer_e, t.timer_g) == (0.5, 0.5, 0.5)
    assert (t.timer_b, t.timer_f, t.timer_h, t.timer_j, t.timer_l) == (32.0,) * 5
    assert t.timer_d == 32.0
    assert (t.timer_i, t.timer_k) == (5.0, 5.0)


def test_timers_scale_with_t1_and_reliable_ones_are_zero() -> None:
    t = SipTimers(t1=0.1, t2=0.4, t4=1.0)
    assert t.timer_b == pytest.approx(6.4)
    assert t.timer_h == pytest.approx(6.4)
    assert t.timer_d == 32.0  # "at least 32 s", not derived from T1
    assert [t.duration(n, reliable=True) for n in "DIJK"] == [0.0] * 4
    assert t.duration("J", reliable=False) == pytest.approx(6.4)
    assert t.duration("H", reliable=True) == pytest.approx(6.4)
    assert t.duration("B", reliable=True) == pytest.approx(6.4)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"t1": 0.0}, "T1 must be positive, got 0.0"),
        ({"t1": 1.0, "t2": 0.5}, "T2 must be at least T1 (1.0), got 0.5"),
        ({"t4": -1.0}, "T4 must be positive, got -1.0"),
    ],
)
def test_timers_reject_nonsense(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError) as exc:
        SipTimers(**kwargs)
    assert str(exc.value) == message


def test_tables_use_the_rfc_state_names() -> None:
    names = {
        state.value
        for table in (INVITE_CLIENT, NON_INVITE_CLIENT, INVITE_SERVER, NON_INVITE_SERVER)
        for (state, _), transition in table.transitions.items()
        for state in (state, transition.target)
    }
    assert names == {
        "Calling",
        "Trying",
        "Proceeding",
        "Completed",
        "Confirmed",
        "Accepted",
        "Terminated",
    }


# ------------------------------------------------------- INVITE client


def test_invite_client_sends_the_request_and_arms_a_and_b() -> None:
    inv = invite()
    txn = client(inv)
    assert txn.state == "Calling"
    assert txn.key == ("z9hG4bK74bf9", "INVITE")
    [data] = txn.data_to_send()
    assert data == bytes(inv)
    assert parse(data).body == SDP
    assert txn.get_timer() == START + 0.5
    assert events(txn) == []


def test_invite_client_timer_a_doubles_until_timer_b() -> None:
    clock = FakeClock(START)
    inv = invite()
    txn = client(inv)
    txn.data_to_send()
    fired = clock.run_timers(txn, until=START + 64 * 0.5)
    times = [t - START for t, _ in fired]
    # §17.1.1.2: A = T1, 2*T1, 4*T1, ... until B = 64*T1 (A is not capped at T2).
    assert times == [0.5, 1.5, 3.5, 7.5, 15.5, 31.5, 32.0]
    assert [data for _, data in fired[:-1]] == [[bytes(inv)]] * 6
    assert fired[-1][1] == []
    assert txn.retransmissions == 6
    assert events(txn) == [Timeout("B"), Terminated()]
    assert txn.state == "Terminated"
    assert txn.get_timer() is None


def test_invite_client_provisional_stops_retransmissions() -> None:
    clock = FakeClock(START)
    inv = invite()
    txn = client(inv)
    txn.data_to_send()
    txn.receive_response(answer(inv, 100), START + 0.2)
    assert statuses(events(txn)) == [100]
    assert txn.state == "Proceeding"
    assert txn.get_timer() is None  # neither A nor B runs in Proceeding (Figure 5)
    assert clock.run_timers(txn, until=START + 200) == []
    txn.receive_response(answer(inv, 180), START + 201)
    assert statuses(events(txn)) == [180]
    assert txn.state == "Proceeding"
    assert txn.data_to_send() == []


@pytest.mark.parametrize(
    ("status", "ringing_first"), [(486, True), (302, False), (603, False), (404, True)]
)
def test_invite_client_acks_a_failure_and_absorbs_its_retransmissions(
    status: int, ringing_first: bool
) -> None:
    clock = FakeClock(START)
    inv = invite()
    txn = client(inv)
    txn.data_to_send()
    if ringing_first:
        txn.receive_response(answer(inv, 180), START + 0.1)
        assert statuses(events(txn)) == [180]
    final = answer(inv, status)
    txn.receive_response(final, START + 1)
    assert statuses(events(txn)) == [status]
    assert txn.state == "Completed"
    [data] = txn.data_to_send()
    ack = parse(data)
    assert isinstance(ack, Request)
    # §17.1.1.3: same Request-URI, Call-ID, From, CSeq number; To from the response.
    assert (ack.method, ack.uri) == ("ACK", "sip:bob@biloxi.example.com")
    assert ack.headers.get_all("Via") == [
        "SIP/2.0/UDP client.atlanta.example.com:5060;branch=z9hG4bK74bf9"
    ]
    assert ack.headers.get("From") == inv.headers.get("From")
    assert ack.headers.get("To") == "Bob <sip:bob@biloxi.example.com>;tag=314159"
    assert ack.call_id == inv.call_id
    assert ack.cseq == (1, "ACK")
    assert ack.headers.get("Max-Forwards") == "70"
    assert ack.body == b""
    assert "Route" not in ack.headers
    # Timer D (32 s over UDP) replaces A and B.
    assert txn.get_timer() == START + 1 + 32

    # A retransmitted final re-sends the ACK and is not passed up.
    txn.receive_response(answer(inv, status), START + 2)
    assert events(txn) == []
    assert txn.data_to_send() == [data]
    assert txn.retransmissions == 1
    # A late provisional in Completed is discarded.
    txn.receive_response(answer(inv, 180), START + 3)
    assert events(txn) == []
    assert txn.data_to_send() == []

    assert clock.run_timers(txn, until=START + 33) == [(START + 33, [])]
    assert events(txn) == [Terminated()]
    txn.receive_response(answer(inv, status), START + 34)
    assert events(txn) == [] and txn.data_to_send() == []


def test_invite_client_ack_copies_route_and_only_the_top_via() -> None:
    inv = request(FORWARDED_INVITE, SDP)
    txn = client(inv)
    txn.data_to_send()
    txn.receive_response(answer(inv, 404), START + 1)
    [data] = txn.data_to_send()
    ack = parse(data)
    assert ack.headers.get_all("Via") == [
        "SIP/2.0/UDP ss1.atlanta.example.com:5060;branch=z9hG4bK2d4790.1"
    ]
    assert ack.headers.get_all("Route") == [
        "<sip:ss2.biloxi.example.com;lr>",
        "<sip:edge.biloxi.example.com;lr>",
    ]
    assert "Record-Route" not in ack.headers
    assert ack.headers.get("Max-Forwards") == "69"


@pytest.mark.parametrize("ringing_first", [False, True])
def test_invite_client_passes_a_2xx_up_and_terminates(ringing_first: bool) -> None:
    inv = invite()
    txn = client(inv)
    txn.data_to_send()
    if ringing_first:
        txn.receive_response(answer(inv, 180), START + 0.1)
    txn.receive_response(answer(inv, 200, to_tag="8321234356"), START + 1)
    evs = events(txn)
    assert statuses(evs) == ([180, 200] if ringing_first else [200])
    assert evs[-1] == Terminated()
    assert txn.state == "Terminated"
    assert txn.data_to_send() == []  # the TU ACKs a 2xx itself (§13.2.2.4)
    assert txn.get_timer() is None
    txn.receive_response(answer(inv, 200, to_tag="8321234356"), START + 1.5)
    assert events(txn) == []


def test_invite_client_over_a_reliable_transport() -> None:
    clock = FakeClock(START)
    inv = invite()
    txn = client(inv, reliable=True)
    assert txn.data_to_send() == [bytes(inv)]
    assert txn.get_timer() == START + 32  # only B: no A over TCP/TLS/WS
    txn.receive_response(answer(inv, 486), START + 1)
    assert statuses(events(txn)) == [486]
    assert len(txn.data_to_send()) == 1  # the ACK
    assert txn.state == "Completed"
    assert txn.get_timer() == START + 1  # D = 0
    txn.handle_timer(START + 1)
    assert events(txn) == [Terminated()]
    assert clock.run_timers(txn, until=START + 100) == []


def test_invite_client_over_a_reliable_transport_times_out_without_retransmitting() -> None:
    clock = FakeClock(START)
    txn = client(invite(), reliable=True)
    txn.data_to_send()
    assert clock.run_timers(txn, until=START + 100) == [(START + 32, [])]
    assert events(txn) == [Timeout("B"), Terminated()]
    assert txn.retransmissions == 0


def test_client_transaction_refuses_ack_and_a_request_without_branch() -> None:
    with pytest.raises(ValueError):
        client(request(ACK_FOR_486))
    no_branch = request(INVITE.replace(";branch=z9hG4bK74bf9", ""), SDP)
    with pytest.raises(ValueError):
        client(no_branch)


def test_client_transaction_refuses_a_response_of_another_transaction() -> None:
    inv = invite()
    txn = client(inv)
    cancel_response = answer(make_cancel(inv), 200)
    with pytest.raises(ValueError):
        txn.receive_response(cancel_response, START + 1)
    assert txn.state == "Calling"


def test_client_transaction_discards_a_status_outside_100_to_699() -> None:
    inv = invite()
    txn = client(inv)
    txn.data_to_send()
    odd = Response(700, "Odd", answer(inv, 486).headers)
    txn.receive_response(odd, START + 1)
    assert txn.state == "Calling"
    assert events(txn) == [] and txn.data_to_send() == []


def test_client_transaction_keeps_its_own_copy_of_the_request() -> None:
    inv = invite()
    txn = client(inv)
    inv.headers.pop_first("Via")  # a proxy's failover rewrites its request
    inv.headers.prepend("Via", "SIP/2.0/UDP other.example.com;branch=z9hG4bKother")
    assert txn.data_to_send() == [bytes(invite())]
    txn.receive_response(answer(invite(), 486), START + 1)
    assert b"branch=z9hG4bK74bf9" in txn.data_to_send()[0]


# ----------------------------------------------------- non-INVITE client


def test_non_invite_client_timer_e_doubles_up_to_t2_until_f() -> None:
    clock = FakeClock(START)
    reg = request(REGISTER)
    txn = client(reg)
    assert txn.state == "Trying"
    assert txn.key == ("z9hG4bKnashds7", "REGISTER")
    assert txn.data_to_send() == [bytes(reg)]
    fired = clock.run_timers(txn, until=START + 64 * 0.5)
    times = [t - START for t, _ in fired]
    # §17.1.2.2: E = T1, 2*T1, 4*T1, then T2 (4 s) until F = 64*T1.
    assert times == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5, 32.0]
    assert [data for _, data in fired[:-1]] == [[bytes(reg)]] * 10
    assert events(txn) == [Timeout("F"), Terminated()]


def test_a_timeout_wins_a_tie_with_a_retransmission() -> None:
    # With T2 = T1 = 0.5 s, E comes due at 32.0 s together with F = 64*T1: F fires
    # first and cancels E, so nothing is retransmitted at the moment of giving up.
    clock = FakeClock(START)
    timers = SipTimers(t1=0.5, t2=0.5)
    reg = request(REGISTER)
    txn = ClientTransaction(reg, reliable=False, timers=timers, now=START)
    txn.data_to_send()
    fired = clock.run_timers(txn, until=START + 40)
    assert len(fired) == 64
    assert [t - START for t, _ in fired[-2:]] == [31.5, 32.0]
    assert fired[-2][1] == [bytes(reg)]
    assert fired[-1][1] == []
    assert txn.retransmissions == 63
    assert events(txn) == [Timeout("F"), Terminated()]


def test_non_invite_client_provisional_retransmits_every_t2_until_f() -> None:
    clock = FakeClock(START)
    reg = request(REGISTER)
    txn = client(reg)
    txn.data_to_send()
    txn.receive_response(answer(reg, 100), START + 0.2)
    assert statuses(events(txn)) == [100]
    assert txn.state == "Proceeding"
    fired = clock.run_timers(txn, until=START + 10)
    # E keeps its pending deadline, then is reset to T2 each time (§17.1.2.2).
    assert [t - START for t, _ in fired] == [0.5, 4.5, 8.5]
    assert all(data == [bytes(reg)] for _, data in fired)
    txn.receive_response(answer(reg, 100), START + 11)
    assert statuses(events(txn)) == [100]
    fired = clock.run_timers(txn, until=START + 40)
    assert fired[-1] == (START + 32, [])
    assert events(txn) == [Timeout("F"), Terminated()]


@pytest.mark.parametrize(("status", "provisional_first"), [(200, False), (401, True), (503, False)])
def test_non_invite_client_final_completes_and_timer_k_absorbs(
    status: int, provisional_first: bool
) -> None:
    clock = FakeClock(START)
    reg = request(REGISTER)
    txn = client(reg)
    txn.data_to_send()
    if provisional_first:
        txn.receive_response(answer(reg, 100), START + 0.1)
        assert statuses(events(txn)) == [100]
    txn.receive_response(answer(reg, status), START + 1)
    assert statuses(events(txn)) == [status]
    assert txn.state == "Completed"
    assert txn.data_to_send() == []  # no ACK outside INVITE
    assert txn.get_timer() == START + 1 + 5  # K = T4
    txn.receive_response(answer(reg, status), START + 2)
    txn.receive_response(answer(reg, 100), START + 2)
    assert events(txn) == [] and txn.data_to_send() == []
    assert clock.run_timers(txn, until=START + 10) == [(START + 6, [])]
    assert events(txn) == [Terminated()]


def test_non_invite_client_over_a_reliable_transport() -> None:
    bye = request(BYE)
    txn = client(bye, reliable=True)
    assert txn.data_to_send() == [bytes(bye)]
    assert txn.get_timer() == START + 32  # only F
    txn.receive_response(answer(bye, 200, to_tag=None), START + 0.3)
    assert statuses(events(txn)) == [200]
    assert txn.get_timer() == START + 0.3  # K = 0
    txn.handle_timer(START + 0.3)
    assert events(txn) == [Terminated()]
    assert txn.retransmissions == 0


# ------------------------------------------------------- INVITE server


def test_invite_server_waits_for_the_tu() -> None:
    inv = invite()
    txn = server(inv)
    assert txn.state == "Proceeding"
    assert txn.key == ("z9hG4bK74bf9", "client.atlanta.example.com:5060", "INVITE")
    assert txn.data_to_send() == []  # the 100 (Trying) is the TU's job
    assert txn.get_timer() is None
    txn.receive_request(invite(), START + 0.5)  # nothing to resend yet
    assert txn.data_to_send() == [] and events(txn) == []


def test_invite_server_resends_the_latest_provisional() -> None:
    inv = invite()
    txn = server(inv)
    trying, ringing = make_response(inv, 100), make_response(inv, 180, to_tag="314159")
    txn.send_response(trying, START + 0.01)
    assert txn.data_to_send() == [bytes(trying)]
    txn.receive_request(invite(), START + 0.5)
    assert txn.data_to_send() == [bytes(trying)]
    txn.send_response(ringing, START + 1)
    assert txn.data_to_send() == [bytes(ringing)]
    txn.receive_request(invite(), START + 1.5)
    assert txn.data_to_send() == [bytes(ringing)]
    assert txn.state == "Proceeding"
    assert txn.retransmissions == 2
    assert events(txn) == []


def test_invite_server_failure_timer_g_until_timer_h() -> None:
    clock = FakeClock(START)
    inv = invite()
    txn = server(inv)
    busy = make_response(inv, 486, to_tag="314159")
    txn.send_response(busy, START + 1)
    assert txn.state == "Completed"
    assert txn.data_to_send() == [bytes(busy)]
    fired = clock.run_timers(txn, until=START + 40)
    # §17.2.1: G = T1, then MIN(2*G, T2); H = 64*T1 ends it.
    assert [t - START - 1 for t, _ in fired] == [
        0.5,
        1.5,
        3.5,
        7.5,
        11.5,
        15.5,
        19.5,
        23.5,
        27.5,
        31.5,
        32.0,
    ]
    assert [data for _, data in fired[:-1]] == [[bytes(busy)]] * 10
    assert fired[-1][1] == []
    assert events(txn) == [Timeout("H"), Terminated()]


def test_invite_server_resends_the_final_for_a_retransmitted_invite() -> None:
    inv = invite()
    txn = server(inv)
    busy = make_response(inv, 486, to_tag="314159")
    txn.send_response(busy, START + 1)
    txn.data_to_send()
    txn.receive_request(invite(), START + 1.2)
    assert txn.data_to_send() == [bytes(busy)]
    assert events(txn) == []


def test_invite_server_ack_confirms_and_timer_i_ends_it() -> None:
    clock = FakeClock(START)
    inv = invite()
    txn = server(inv)
    busy = make_response(inv, 486, to_tag="314159")
    txn.send_response(busy, START + 1)
    txn.data_to_send()
    assert clock.run_timers(txn, until=START + 1.6) == [(START + 1.5, [bytes(busy)])]
    ack = request(ACK_FOR_486)
    txn.receive_request(ack, START + 2)
    assert events(txn) == [AckReceived(ack)]
    assert txn.state == "Confirmed"
    assert txn.get_timer() == START + 2 + 5  # I = T4; G and H stopped
    # Confirmed absorbs ACK and INVITE retransmissions.
    txn.receive_request(request(ACK_FOR_486), START + 3)
    txn.receive_request(invite(), START + 3)
    assert events(txn) == [] and txn.data_to_send() == []
    assert clock.run_timers(txn, until=START + 40) == [(START + 7, [])]
    assert events(txn) == [Terminated()]


def test_invite_server_over_a_reliable_transport() -> None:
    clock = FakeClock(START)
    inv = invite()
    txn = server(inv, reliable=True)
    txn.send_response(make_response(inv, 603, to_tag="314159"), START + 1)
    assert len(txn.data_to_send()) == 1
    assert txn.get_timer() == START + 1 + 32  # H only: no G over reliable transports
    txn.receive_request(request(ACK_FOR_486), START + 2)
    assert [type(e) for e in events(txn)] == [AckReceived]
    assert txn.get_timer() == START + 2  # I = 0
    assert clock.run_timers(txn, until=START + 2) == [(START + 2, [])]
    assert events(txn) == [Terminated()]
    assert txn.retransmissions == 0


def test_invite_server_over_a_reliable_transport_times_out_waiting_for_ack() -> None:
    clock = FakeClock(START)
    inv = invite()
    txn = server(inv, reliable=True)
    txn.send_response(make_response(inv, 486, to_tag="314159"), START)
    txn.data_to_send()
    assert clock.run_timers(txn, until=START + 100) == [(START + 32, [])]
    assert events(txn) == [Timeout("H"), Terminated()]


def test_invite_server_2xx_enters_accepted_rfc6026() -> None:
    clock = FakeClock(START)
    inv = invite()
    txn = server(inv)
    txn.send_response(make_response(inv, 180, to_tag="8321234356"), START + 0.5)
    txn.data_to_send()
    ok = make_response(inv, 200, to_tag="8321234356")
    txn.send_response(ok, START + 1)
    assert txn.state == "Accepted"
    assert txn.data_to_send() == [bytes(ok)]
    assert txn.get_timer() == START + 1 + 32  # L = 64*T1, and no G: the TU retransmits
    # INVITE retransmissions are absorbed, not answered and not passed up.
    txn.receive_request(invite(), START + 1.2)
    assert txn.data_to_send() == [] and events(txn) == []
    # The TU's 2xx retransmissions go out; a late failure does not.
    txn.send_response(ok, START + 1.5)
    assert txn.data_to_send() == [bytes(ok)]
    txn.send_response(make_response(inv, 500, to_tag="8321234356"), START + 1.6)
    assert txn.data_to_send() == []
    # An ACK that matches is passed up (RFC 6026 §7.1).
    ack = request(ACK_FOR_486.replace("314159", "8321234356"))
    txn.receive_request(ack, START + 2)
    assert events(txn) == [AckReceived(ack)]
    assert txn.state == "Accepted"
    assert clock.run_timers(txn, until=START + 40) == [(START + 33, [])]
    assert events(txn) == [Terminated()]  # no Timeout: L is not a failure


def test_server_transaction_refuses_ack_foreign_requests_and_bad_statuses() -> None:
    with pytest.raises(ValueError):
        server(request(ACK_FOR_486))
    inv = invite()
    txn = server(inv)
    with pytest.raises(ValueError):
        txn.receive_request(request(BYE), START + 1)
    with pytest.raises(ValueError):
        txn.send_response(Response(99, "Odd", make_response(inv, 100).headers), START + 1)
    assert txn.state == "Proceeding"


# --------------------------------------------------- non-INVITE server


def test_non_invite_server_trying_proceeding_completed() -> None:
    clock = FakeClock(START)
    bye = request(BYE)
    txn = server(bye)
    assert txn.state == "Trying"
    assert txn.key == ("z9hG4bKnashds7", "client.biloxi.example.com:5060", "BYE")
    txn.receive_request(request(BYE), START + 0.5)  # discarded in Trying
    assert txn.data_to_send() == []
    trying = make_response(bye, 100)
    txn.send_response(trying, START + 0.6)
    assert txn.state == "Proceeding"
    assert txn.data_to_send() == [bytes(trying)]
    txn.receive_request(request(BYE), START + 1.5)
    assert txn.data_to_send() == [bytes(trying)]
    ok = make_response(bye, 200)
    txn.send_response(ok, START + 2)
    assert txn.state == "Completed"
    assert txn.data_to_send() == [bytes(ok)]
    txn.receive_request(request(BYE), START + 3.5)
    assert txn.data_to_send() == [bytes(ok)]
    # §17.2.2: "Any other final responses passed by the TU ... MUST be discarded".
    txn.send_response(make_response(bye, 500), START + 4)
    assert txn.data_to_send() == []
    assert txn.get_timer() == START + 2 + 32  # J = 64*T1 over UDP
    assert clock.run_timers(txn, until=START + 40) == [(START + 34, [])]
    assert events(txn) == [Terminated()]
    assert txn.retransmissions == 2


def test_non_invite_server_final_straight_from_trying() -> None:
    reg = request(REGISTER)
    txn = server(reg, reliable=True)
    challenge = make_response(reg, 401, to_tag="1410948204")
    txn.send_response(challenge, START + 0.1)
    assert txn.state == "Completed"
    assert txn.data_to_send() == [bytes(challenge)]
    assert txn.get_timer() == START + 0.1  # J = 0 over TLS
    txn.handle_timer(START + 0.1)
    assert events(txn) == [Terminated()]
    txn.send_response(make_response(reg, 200), START + 0.2)
    assert txn.data_to_send() == []


# ------------------------------------------------------------ matching


def test_client_key_matches_responses_and_keeps_cancel_apart() -> None:
    inv = invite()
    invite_txn = client(inv)
    cancel_txn = client(make_cancel(inv))
    assert invite_txn.key == ("z9hG4bK74bf9", "INVITE")
    assert cancel_txn.key == ("z9hG4bK74bf9", "CANCEL")
    assert client_key(answer(inv, 487)) == invite_txn.key
    assert client_key(answer(make_cancel(inv), 200)) == cancel_txn.key


def test_client_key_needs_a_branch() -> None:
    inv = invite()
    response = answer(inv, 200)
    response.headers.set("Via", "SIP/2.0/UDP client.atlanta.example.com:5060")
    with pytest.raises(ParseError) as exc:
        client_key(response)
    assert str(exc.value) == "Via has no branch parameter"


def test_server_key_sends_the_ack_for_a_failure_to_its_invite() -> None:
    key = server(invite()).key
    assert server_key(request(ACK_FOR_486)) == key
    assert server_key(request(ACK_FOR_200)) != key  # a 2xx ACK is its own transaction


def test_server_key_keeps_cancel_apart_and_finds_its_invite() -> None:
    invite_key = server(invite()).key
    cancel = request(CANCEL)
    cancel_txn = server(cancel)
    assert cancel_txn.key == ("z9hG4bK74bf9", "client.atlanta.example.com:5060", "CANCEL")
    assert cancel_txn.key != invite_key
    assert cancel_target_key(cancel) == invite_key


def test_server_key_compares_sent_by() -> None:
    key = server(invite()).key
    other_port = INVITE.replace("example.com:5060;branch", "example.com:5070;branch")
    assert server_key(request(other_port, SDP)) != key
    upper = INVITE.replace("client.atlanta.example.com:5060", "CLIENT.Atlanta.example.com:5060")
    assert server_key(request(upper, SDP)) == key


def test_server_key_without_magic_cookie_or_branch() -> None:
    # RFC 4475 §3.2.1 "badbranch": a branch without the cookie is matched as it is.
    old_style = request(INVITE.replace("z9hG4bK74bf9", "z9hG4bK"[:6] + "74bf9"), SDP)
    assert server_key(old_style)[0] == "z9hG4b74bf9"
    assert server_key(old_style) == server(old_style).key
    # No branch at all: Call-ID, CSeq number and From tag stand in for it, so the
    # retransmission and the ACK still find the INVITE.
    no_branch = request(INVITE.replace(";branch=z9hG4bK74bf9", ""), SDP)
    txn = server(no_branch)
    ack = request(ACK_FOR_486.replace(";branch=z9hG4bK74bf9", ""))
    assert server_key(ack) == txn.key
    next_invite = request(
        INVITE.replace(";branch=z9hG4bK74bf9", "").replace("1 INVITE", "2 INVITE")
    )
    assert server_key(next_invite) != txn.key


# -------------------------------------------------- CANCEL and branches


def test_make_cancel_follows_rfc3261_section_9_1() -> None:
    inv = request(FORWARDED_INVITE, SDP)
    cancel = parse(bytes(make_cancel(inv)))
    assert isinstance(cancel, Request)
    assert (cancel.method, cancel.uri) == ("CANCEL", inv.uri)
    assert cancel.headers.get_all("Via") == [
        "SIP/2.0/UDP ss1.atlanta.example.com:5060;branch=z9hG4bK2d4790.1"
    ]
    assert cancel.headers.get_all("Route") == inv.headers.get_all("Route")
    for name in ("From", "To", "Call-ID", "Max-Forwards"):
        assert cancel.headers.get(name) == inv.headers.get(name), name
    assert cancel.cseq == (1, "CANCEL")
    assert cancel.body == b""
    assert "Record-Route" not in cancel.headers and "Contact" not in cancel.headers


def test_ack_and_cancel_need_the_headers_they_copy() -> None:
    inv = invite()
    no_via = inv.copy()
    no_via.headers.remove("Via")
    with pytest.raises(ValueError):
        make_cancel(no_via)
    no_to = answer(inv, 486)
    no_to.headers.remove("To")
    with pytest.raises(ValueError):
        make_ack(inv, no_to)


def test_make_branch_is_deterministic_and_a_valid_via_token() -> None:
    branch = make_branch(b"z9hG4bK74bf9|client.atlanta.example.com:5060")
    assert branch == make_branch(b"z9hG4bK74bf9|client.atlanta.example.com:5060")
    assert branch != make_branch(b"z9hG4bK74bf9|client.atlanta.example.com:5070")
    assert branch.startswith("z9hG4bK")
    assert len(branch) == len("z9hG4bK") + 22  # 128 bits in unpadded base64
    via = parse_via(f"SIP/2.0/UDP gw.example.com;branch={branch}")
    assert via.branch == branch
    assert str(via) == f"SIP/2.0/UDP gw.example.com;branch={branch}"


# --------------------------------------------------------------- pairs


def test_request_lost_twice_still_completes() -> None:
    clock = FakeClock(START)
    pair = TransactionPair(request(REGISTER), clock=clock, uplink=LossyLink("xx"))
    pair.run(until=START + 1.4)
    assert pair.server is None
    pair.run(until=START + 2)
    assert pair.uplink.dropped == 2
    assert pair.server is not None
    assert pair.server_created_at == START + 1.5  # the second retransmission (E)
    ok = make_response(pair.server.request, 200, to_tag="37GkEhwl6")
    pair.server.send_response(ok, clock.now)
    pair.transfer()
    assert statuses(events(pair.client)) == [200]
    assert (pair.client.state, pair.server.state) == (State.COMPLETED, State.COMPLETED)
    pair.run(until=START + 40)
    assert events(pair.client) == [Terminated()]
    assert events(pair.server) == [Terminated()]
    assert pair.uplink.sent == 3


def test_invite_lost_twice_and_its_failure_lost_once_still_completes() -> None:
    clock = FakeClock(START)
    pair = TransactionPair(invite(), clock=clock, uplink=LossyLink("xx"), downlink=LossyLink("x"))
    pair.run(until=START + 1.5)
    assert pair.server is not None and pair.server_created_at == START + 1.5
    busy = make_response(pair.server.request, 486, to_tag="314159")
    pair.server.send_response(busy, clock.now)
    pair.transfer()  # the 486 is lost
    assert pair.downlink.dropped == 1 and events(pair.client) == []
    pair.run(until=START + 2.1)  # Timer G re-sends it at 2.0 s; the client ACKs
    assert statuses(events(pair.client)) == [486]
    [ack_event] = events(pair.server)
    assert isinstance(ack_event, AckReceived)
    assert ack_event.request.cseq == (1, "ACK")
    assert (pair.client.state, pair.server.state) == (State.COMPLETED, State.CONFIRMED)
    pair.run(until=START + 40)
    assert events(pair.client) == [Terminated()]
    assert events(pair.server) == [Terminated()]
    assert pair.uplink.sent == 4  # three INVITEs and one ACK


def test_lost_ack_is_recovered_by_timer_g() -> None:
    clock = FakeClock(START)
    pair = TransactionPair(invite(), clock=clock, uplink=LossyLink(".x"))
    pair.transfer()
    assert pair.server is not None
    pair.server.send_response(make_response(pair.server.request, 486, to_tag="314159"), START)
    pair.transfer()  # 486 arrives, the ACK is lost
    assert statuses(events(pair.client)) == [486]
    assert pair.server.state == "Completed"
    pair.run(until=START + 0.6)  # G re-sends the 486; the client re-sends its ACK
    assert pair.client.retransmissions == 1
    assert pair.server.retransmissions == 1
    assert [type(e) for e in events(pair.server)] == [AckReceived]
    assert pair.server.state == "Confirmed"
    assert events(pair.client) == []  # the retransmitted 486 was not passed up again
