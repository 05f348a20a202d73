"""ICE-lite agent: STUN Binding answers, integrity/fingerprint, nomination, consent."""

from __future__ import annotations

from aioice import stun

from gateway.media.ice import CONSENT_TIMEOUT, MAX_CHECKED_ADDRESSES, IceLiteAgent

# RFC 5769 §2.1 "Sample Request": short-term credentials, USERNAME "evtj:h6vY",
# password "VOkJxbRl1RmTxUk/WvJxBt"; carries ICE-CONTROLLED.
RFC5769_REQUEST = bytes.fromhex(
    "00010058 2112a442 b7e7a701 bc34d686 fa87dfae"
    "80220010 5354554e 20746573 7420636c 69656e74"
    "00240004 6e0001ff"
    "80290008 932ff9b1 51263b36"
    "00060009 6576746a 3a683676 59202020"
    "00080014 9aeaa70c bfd8cb56 781ef2b5 b2d3f249 c1b571a2"
    "80280004 e57a3bcf"
)
# RFC 5769 §2.2 "Sample IPv4 Response": XOR-MAPPED-ADDRESS of 192.0.2.1:32853 for the
# same transaction ID, attribute header included.
RFC5769_XOR_MAPPED_IPV4 = bytes.fromhex("00200008 0001a147 e112a643")
RFC5769_PASSWORD = "VOkJxbRl1RmTxUk/WvJxBt"
BROWSER = ("192.0.2.1", 32853)


def agent() -> IceLiteAgent:
    a = IceLiteAgent(local_ufrag="evtj", local_pwd=RFC5769_PASSWORD)
    a.set_remote("h6vY", "remote-password-unused-here")
    return a


def check(
    *,
    username: str = "evtj:h6vY",
    password: str = RFC5769_PASSWORD,
    controlling: bool = True,
    use_candidate: bool = False,
    integrity: bool = True,
) -> bytes:
    """A Binding request as a full, controlling ICE agent (a browser) sends it."""
    request = stun.Message(stun.Method.BINDING, stun.Class.REQUEST)
    request.attributes["USERNAME"] = username
    request.attributes["PRIORITY"] = 1853824767
    if controlling:
        request.attributes["ICE-CONTROLLING"] = 0x1234
    else:
        request.attributes["ICE-CONTROLLED"] = 0x1234
    if use_candidate:
        request.attributes["USE-CANDIDATE"] = None
    if integrity:
        request.add_message_integrity(password.encode())
    else:
        request.add_fingerprint()
    return bytes(request)


def parse_verified(data: bytes) -> stun.Message:
    # parse_message checks FINGERPRINT (raises ValueError on mismatch).
    response = stun.parse_message(data)
    assert "FINGERPRINT" in response.attributes
    assert response.check_message_integrity(RFC5769_PASSWORD.encode())
    return response


def test_rfc5769_sample_request_vector_is_authentic() -> None:
    request = stun.parse_message(RFC5769_REQUEST)
    assert request.attributes["USERNAME"] == "evtj:h6vY"
    assert request.check_message_integrity(RFC5769_PASSWORD.encode())


def test_rfc5769_request_with_ice_controlled_gets_authenticated_487() -> None:
    # The vector's sender claims the controlled role; a lite agent is always controlled
    # (RFC 8445 §6.1.1), so it answers 487 Role Conflict (§7.3.1.1) — after integrity passed.
    a = agent()
    data = a.receive(RFC5769_REQUEST, BROWSER, now=0.0)
    assert data is not None
    response = parse_verified(data)
    assert response.message_class == stun.Class.ERROR
    assert response.transaction_id == bytes.fromhex("b7e7a701bc34d686fa87dfae")
    assert response.attributes["ERROR-CODE"] == (487, "Role Conflict")
    assert a.role_conflicts == 1 and a.auth_failures == 0
    assert a.selected is None and not a.is_checked(BROWSER)


def test_controlling_check_gets_success_with_xor_mapped_address() -> None:
    a = agent()
    request = check()
    data = a.receive(request, BROWSER, now=1.0)
    assert data is not None
    response = parse_verified(data)
    assert response.message_class == stun.Class.RESPONSE
    assert response.transaction_id == stun.parse_message(request).transaction_id
    assert response.attributes["XOR-MAPPED-ADDRESS"] == BROWSER
    assert a.is_checked(BROWSER)
    assert a.selected is None  # checked, not nominated
    assert a.last_check == 1.0


def test_success_response_encodes_the_rfc5769_mapped_address() -> None:
    # The RFC 5769 request re-signed as a controlling agent's check (same transaction ID):
    # the XOR-MAPPED-ADDRESS for 192.0.2.1:32853 must be the §2.2 bytes.
    vector = stun.parse_message(RFC5769_REQUEST)
    request = stun.Message(stun.Method.BINDING, stun.Class.REQUEST, vector.transaction_id)
    request.attributes["USERNAME"] = "evtj:h6vY"
    request.attributes["ICE-CONTROLLING"] = 1
    request.add_message_integrity(RFC5769_PASSWORD.encode())
    data = agent().receive(bytes(request), BROWSER, now=0.0)
    assert data is not None
    parse_verified(data)
    assert data[20:32] == RFC5769_XOR_MAPPED_IPV4


def test_use_candidate_nominates_and_renomination_moves_media() -> None:
    a = agent()
    a.receive(check(use_candidate=True), BROWSER, now=0.0)
    assert a.selected == BROWSER and a.nominations == 1
    other = ("198.51.100.7", 40000)
    a.receive(check(use_candidate=True), other, now=1.0)
    assert a.selected == other and a.nominations == 2
    a.receive(check(), BROWSER, now=2.0)  # a check without USE-CANDIDATE does not move it
    assert a.selected == other


def test_wrong_password_username_or_missing_integrity_are_refused() -> None:
    a = agent()
    for request, code in (
        (check(password="wrong-password-xxxxxxxxx"), 401),
        (check(username="nope:h6vY"), 401),
        (check(username="evtj:other"), 401),
        (check(integrity=False), 400),
    ):
        data = a.receive(request, BROWSER, now=0.0)
        assert data is not None
        response = stun.parse_message(data)
        assert response.message_class == stun.Class.ERROR
        assert response.error_code == code
    assert a.auth_failures == 4
    assert not a.is_checked(BROWSER) and a.selected is None


def test_malformed_and_non_requests_are_not_answered() -> None:
    a = agent()
    assert a.receive(b"\x00\x01\x00\x00", BROWSER, 0.0) is None
    assert a.receive(RFC5769_REQUEST[:-1], BROWSER, 0.0) is None
    assert a.receive(RFC5769_REQUEST[:-4] + b"\x00\x00\x00\x00", BROWSER, 0.0) is None
    assert a.receive(b"\x00" * 5000, BROWSER, 0.0) is None
    assert a.malformed == 4
    indication = stun.Message(stun.Method.BINDING, stun.Class.INDICATION)
    indication.add_fingerprint()
    assert a.receive(bytes(indication), BROWSER, 0.0) is None
    assert a.ignored == 1


def test_truncations_of_a_valid_check_never_raise() -> None:
    a = agent()
    request = check()
    for n in range(len(request)):
        a.receive(request[:n], BROWSER, 0.0)
    assert a.requests == 0


def test_consent_checks_keep_answering_for_the_whole_call() -> None:
    a = agent()
    a.receive(check(use_candidate=True), BROWSER, now=0.0)
    for i in range(1, 241):  # RFC 7675 §5.1: a check every ~5 s; 20 minutes of call
        data = a.receive(check(), BROWSER, now=5.0 * i)
        assert data is not None
        assert stun.parse_message(data).message_class == stun.Class.RESPONSE
        assert not a.consent_expired(5.0 * i + 1)
    assert a.selected == BROWSER
    last = 5.0 * 240
    assert not a.consent_expired(last + CONSENT_TIMEOUT)
    assert a.consent_expired(last + CONSENT_TIMEOUT + 0.1)


def test_ice_restart_forgets_nomination() -> None:
    a = agent()
    a.receive(check(use_candidate=True), BROWSER, now=0.0)
    a.set_remote("h6vY", "same-ufrag-same-session")
    assert a.selected == BROWSER
    a.set_remote("NEW1", "restart-password")
    assert a.selected is None and not a.is_checked(BROWSER)
    a.receive(check(username="evtj:NEW1", use_candidate=True), BROWSER, now=1.0)
    assert a.selected == BROWSER


def test_checked_addresses_are_bounded() -> None:
    a = agent()
    for i in range(MAX_CHECKED_ADDRESSES + 3):
        a.receive(check(), ("203.0.113.1", 1000 + i), now=0.0)
    assert len(a.checked) == MAX_CHECKED_ADDRESSES
    assert not a.is_checked(("203.0.113.1", 1000))
    assert a.is_checked(("203.0.113.1", 1000 + MAX_CHECKED_ADDRESSES + 2))
