"""Self-test of the integration harness: the real Kamailio switch and sipp far ends.

No gateway here: these prove that the switch behaves as the gateway's tests
assume (digest auth, Path stored and routed on, 9<port> routing to sipp,
proxy auth for untrusted sources) so that a failing gateway test points at the
gateway, not at the harness.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import socket
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers.kamailio import KAMAILIO_IP, LOAD_PASSWORD, REALM, Kamailio, load_user
from tests.helpers.sipp import SIPP_IP, Sipp, free_udp_port, write_load_users_csv

pytestmark = pytest.mark.integration

SIPP_WAIT_S = 15.0
SOCKET_TIMEOUT_S = 3.0
MAX_PROVISIONALS = 10  # responses read while waiting for a final one

# Load-test users nobody else touches during a session.
REGISTER_USER = load_user(997)
PATH_USER = load_user(996)
LOAD_SMOKE_USERS = 50  # load0000 .. load0049


def _digest(user: str, password: str, method: str, uri: str, challenge: str) -> str:
    """Credentials answering a Digest challenge (RFC 2617 3.2.2, qop=auth, MD5)."""
    params = dict(re.findall(r'(\w+)="?([^",]+)"?', challenge))
    ha1 = hashlib.md5(f"{user}:{params['realm']}:{password}".encode()).hexdigest()
    ha2 = hashlib.md5(f"{method}:{uri}".encode()).hexdigest()
    cnonce, nc = secrets.token_hex(4), "00000001"
    response = hashlib.md5(f"{ha1}:{params['nonce']}:{nc}:{cnonce}:auth:{ha2}".encode()).hexdigest()
    return (
        f'Digest username="{user}", realm="{params["realm"]}", nonce="{params["nonce"]}", '
        f'uri="{uri}", response="{response}", qop=auth, nc={nc}, cnonce="{cnonce}", algorithm=MD5'
    )


def _header(message: str, name: str) -> str:
    for line in message.split("\r\n\r\n", 1)[0].split("\r\n"):
        if line.lower().startswith(name.lower() + ":"):
            return line.split(":", 1)[1].strip()
    return ""


def _transact(sock: socket.socket, switch: Kamailio, request: str) -> str:
    """Send a request over UDP; return the first final response (bounded reads)."""
    sock.sendto(request.encode(), (KAMAILIO_IP, switch.udp_port))
    for _ in range(MAX_PROVISIONALS):
        reply = sock.recv(65535).decode()
        if not reply.startswith("SIP/2.0 1"):
            return reply
    raise AssertionError("no final response")


async def test_register_with_digest_stores_path(
    kamailio: Kamailio, sipp_factory: Callable[..., Sipp]
) -> None:
    """sipp REGISTERs with digest auth; the Path it sent is stored with the binding."""
    aor = f"{REGISTER_USER}@{REALM}"
    kamailio.remove_location(aor)
    token = "tok" + secrets.token_hex(6)
    reg = sipp_factory(
        "uac_register.xml",
        remote=f"{KAMAILIO_IP}:{kamailio.udp_port}",
        service=REGISTER_USER,
        auth=(REGISTER_USER, LOAD_PASSWORD),
        keys={"path_user": token},
    )
    try:
        result = await reg.run(SIPP_WAIT_S)
        assert result.ok, result.describe()
        # RFC 3261 22.4: challenged first, accepted with credentials
        assert [m.first_line for m in result.received()] == [
            "SIP/2.0 401 Unauthorized",
            "SIP/2.0 200 OK",
        ]
        ok = result.received("SIP/2.0 200")[0]
        assert ok.header("Path") == [f"<sip:{token}@{SIPP_IP}:{reg.port};lr;ob>"]  # RFC 3327 5.3

        bindings = kamailio.locations(aor)
        assert len(bindings) == 1
        assert bindings[0]["contact"] == f"sip:{REGISTER_USER}@{SIPP_IP}:{reg.port};transport=UDP"
        assert bindings[0]["path"] == f"<sip:{token}@{SIPP_IP}:{reg.port};lr;ob>"
        assert bindings[0]["received"] == ""
    finally:
        kamailio.remove_location(aor)
    assert kamailio.locations(aor) == []


async def test_register_with_wrong_password_is_refused(
    kamailio: Kamailio, sipp_factory: Callable[..., Sipp]
) -> None:
    aor = f"{REGISTER_USER}@{REALM}"
    reg = sipp_factory(
        "uac_register.xml",
        remote=f"{KAMAILIO_IP}:{kamailio.udp_port}",
        service=REGISTER_USER,
        auth=(REGISTER_USER, "not-the-password"),
        keys={"path_user": "tokwrong"},
        timeout_s=5,
    )
    result = await reg.run(SIPP_WAIT_S)
    assert not result.ok
    assert result.failed_calls == 1
    assert [m.first_line for m in result.received()] == ["SIP/2.0 401 Unauthorized"] * 2
    assert kamailio.locations(aor) == []


async def test_register_load_scenario_registers_every_user(
    kamailio: Kamailio, sipp_factory: Callable[..., Sipp], tmp_path: Path
) -> None:
    """uac_register_load.xml with the injection file: one digest REGISTER per user."""
    count = LOAD_SMOKE_USERS
    users = [load_user(i) for i in range(count)]
    reg = sipp_factory(
        "uac_register_load.xml",
        remote=f"{KAMAILIO_IP}:{kamailio.udp_port}",
        inf=write_load_users_csv(tmp_path / "users.csv", count),
        calls=count,
        limit=20,
        rate=200,
    )
    try:
        result = await reg.run(SIPP_WAIT_S)
        assert result.ok, result.describe()
        assert result.successful_calls == count
        assert len(result.received("SIP/2.0 401")) == count
        for user in (users[0], users[-1]):
            [binding] = kamailio.locations(f"{user}@{REALM}")
            assert binding["contact"] == f"sip:{user}@{SIPP_IP}:{reg.port};transport=UDP"
    finally:
        for user in users:
            kamailio.remove_location(f"{user}@{REALM}")


async def test_call_from_sipp_to_9port_reaches_sipp_uas(
    kamailio: Kamailio, sipp_factory: Callable[..., Sipp]
) -> None:
    """UAC (trusted 127.0.0.3) -> Kamailio -> 9<port> -> UAS; in-dialog requests via the proxy."""
    uas = sipp_factory("uas_answer.xml", service="far")
    await uas.start()
    uac = sipp_factory(
        "uac_invite.xml",
        remote=f"{KAMAILIO_IP}:{kamailio.udp_port}",
        service=f"9{uas.port}",
        call_length_ms=200,
    )
    caller = await uac.run(SIPP_WAIT_S)
    assert caller.ok, caller.describe()
    callee = await uas.wait(SIPP_WAIT_S)
    assert callee.ok, callee.describe()
    assert caller.successful_calls == 1 and callee.successful_calls == 1

    invite = callee.received("INVITE")[0]
    assert invite.first_line == f"INVITE sip:9{uas.port}@{SIPP_IP}:{uas.port} SIP/2.0"
    assert invite.header("Record-Route") == [f"<sip:{KAMAILIO_IP}:{kamailio.udp_port};lr>"]
    assert invite.header("Max-Forwards") == ["69"]  # RFC 3261 16.6 step 3
    # the caller's BYE followed the route set through the switch (RFC 3261 16.12)
    bye = callee.received("BYE")[0]
    assert bye.header("Via")[0].startswith(f"SIP/2.0/UDP {KAMAILIO_IP}:{kamailio.udp_port};")
    assert caller.received("SIP/2.0 200")[-1].header("CSeq") == ["2 BYE"]


async def test_call_to_registered_user_follows_path(
    kamailio: Kamailio, sipp_factory: Callable[..., Sipp]
) -> None:
    """A binding registered the way the gateway does it (``.invalid`` WebSocket Contact,
    Path with a flow token, outbound) is reached through the Path (RFC 3327 5.2),
    here pointing at a sipp UAS standing in for the gateway."""
    aor = f"{PATH_USER}@{REALM}"
    port = free_udp_port(SIPP_IP)
    path = f"<sip:flowTOKEN@{SIPP_IP}:{port};lr;ob>"
    contact = "sip:k3x9@df7jal23ls0d.invalid;transport=ws;ob"
    instance = "<urn:uuid:5b1ac6b6-0f4c-4d44-9d5e-0d1f7c3f4e21>"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.2", 0))
        sock.settimeout(SOCKET_TIMEOUT_S)
        local = sock.getsockname()[1]

        def register(cseq: int, authorization: str = "") -> str:
            return _transact(
                sock,
                kamailio,
                f"REGISTER sip:{REALM} SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP 127.0.0.2:{local};branch=z9hG4bK{secrets.token_hex(8)};rport\r\n"
                "Via: SIP/2.0/WSS df7jal23ls0d.invalid;branch=z9hG4bKbrowser1\r\n"
                "Max-Forwards: 69\r\n"
                f"From: <sip:{PATH_USER}@{REALM}>;tag=reg1\r\n"
                f"To: <sip:{PATH_USER}@{REALM}>\r\n"
                "Call-ID: harness-path-register\r\n"
                f"CSeq: {cseq} REGISTER\r\n"
                f'Contact: <{contact}>;+sip.instance="{instance}";reg-id=1;expires=600\r\n'
                f"Path: {path}\r\n"
                "Supported: path, outbound, gruu\r\n"
                + (f"Authorization: {authorization}\r\n" if authorization else "")
                + "Content-Length: 0\r\n\r\n",
            )

        challenge = register(1)
        assert challenge.startswith("SIP/2.0 401"), challenge
        creds = _digest(
            PATH_USER,
            LOAD_PASSWORD,
            "REGISTER",
            f"sip:{REALM}",
            _header(challenge, "WWW-Authenticate"),
        )
        ok = register(2, creds)
    try:
        assert ok.startswith("SIP/2.0 200"), ok
        assert _header(ok, "Require") == "outbound"  # RFC 5626 6: registrar supports outbound
        assert "pub-gruu=" in _header(ok, "Contact")  # GRUU (RFC 5627) is on
        assert [b["path"] for b in kamailio.locations(aor)] == [path]

        uas = sipp_factory("uas_answer.xml", port=port, service="browser")
        await uas.start()
        uac = sipp_factory(
            "uac_invite.xml",
            remote=f"{KAMAILIO_IP}:{kamailio.udp_port}",
            service=PATH_USER,
            call_length_ms=100,
        )
        caller = await uac.run(SIPP_WAIT_S)
        assert caller.ok, caller.describe()
        callee = await uas.wait(SIPP_WAIT_S)
        assert callee.ok, callee.describe()
        invite = callee.received("INVITE")[0]
        assert invite.first_line == f"INVITE {contact} SIP/2.0"  # R-URI: the registered Contact
        assert invite.header("Route") == [path]  # Path became the route set
    finally:
        kamailio.remove_location(aor)


async def test_invite_from_untrusted_source_is_challenged(kamailio: Kamailio) -> None:
    """Only 127.0.0.3 is trusted; an INVITE from 127.0.0.1 gets 407, and with credentials
    gets past authentication (to 404 for an unknown user)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((KAMAILIO_IP, 0))
        sock.settimeout(SOCKET_TIMEOUT_S)
        local = sock.getsockname()[1]
        target = f"sip:nobody@{REALM}"

        def invite(cseq: int, authorization: str = "") -> str:
            branch = "z9hG4bK" + secrets.token_hex(8)
            reply = _transact(
                sock,
                kamailio,
                f"INVITE {target} SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP {KAMAILIO_IP}:{local};branch={branch};rport\r\n"
                "Max-Forwards: 70\r\n"
                f"From: <sip:alice@{REALM}>;tag=untrusted1\r\n"
                f"To: <{target}>\r\n"
                "Call-ID: harness-untrusted-invite\r\n"
                f"CSeq: {cseq} INVITE\r\n"
                f"Contact: <sip:alice@{KAMAILIO_IP}:{local}>\r\n"
                + (f"Proxy-Authorization: {authorization}\r\n" if authorization else "")
                + "Content-Length: 0\r\n\r\n",
            )
            # ACK the non-2xx final response (RFC 3261 17.1.1.3)
            sock.sendto(
                (
                    f"ACK {target} SIP/2.0\r\n"
                    f"Via: SIP/2.0/UDP {KAMAILIO_IP}:{local};branch={branch};rport\r\n"
                    "Max-Forwards: 70\r\n"
                    f"From: <sip:alice@{REALM}>;tag=untrusted1\r\n"
                    f"To: {_header(reply, 'To')}\r\n"
                    "Call-ID: harness-untrusted-invite\r\n"
                    f"CSeq: {cseq} ACK\r\n"
                    "Content-Length: 0\r\n\r\n"
                ).encode(),
                (KAMAILIO_IP, kamailio.udp_port),
            )
            return reply

        challenge = invite(1)
        assert challenge.startswith("SIP/2.0 407 "), challenge
        proxy_authenticate = _header(challenge, "Proxy-Authenticate")
        assert proxy_authenticate.startswith("Digest ") and f'realm="{REALM}"' in proxy_authenticate

        creds = _digest("alice", "alicepw", "INVITE", target, proxy_authenticate)
        answered = invite(2, creds)
        assert answered.startswith("SIP/2.0 404 "), answered
