"""Flow tokens (RFC 5626 §5.2): only this gateway can mint one, and a token
names exactly one live connection."""

import pytest

from gateway.proxy.flow import TOKEN_LENGTH, FlowTable, FlowTokenSigner, new_flow_id

SECRET = b"k" * 32


def test_round_trip_and_uri_safe() -> None:
    signer = FlowTokenSigner(SECRET)
    for _ in range(200):
        flow_id = new_flow_id()
        token = signer.encode(flow_id)
        assert len(token) == TOKEN_LENGTH
        assert set(token) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
        assert signer.decode(token) == flow_id


def test_forged_tampered_and_foreign_tokens_are_refused() -> None:
    signer = FlowTokenSigner(SECRET)
    token = signer.encode(12345)
    # every single-character change is refused
    alphabet = "AaBb0_-"
    for i in range(len(token)):
        for c in alphabet:
            if c != token[i]:
                assert signer.decode(token[:i] + c + token[i + 1 :]) in (None,)
    assert FlowTokenSigner(b"x" * 32).decode(token) is None
    for bad in (None, "", "abc", token + "A", "!" * TOKEN_LENGTH):
        assert signer.decode(bad) is None


def test_short_secret_rejected() -> None:
    with pytest.raises(ValueError, match="at least 16 bytes"):
        FlowTokenSigner(b"short")


def test_table_maps_token_to_live_flow_only() -> None:
    table = FlowTable(FlowTokenSigner(SECRET))
    flow = table.open(new_flow_id(), "192.0.2.1", 40000, secure=True)
    assert table.by_token(flow.token) is flow
    assert len(table) == 1
    assert table.close(flow.flow_id) is flow
    assert flow.closed
    assert table.by_token(flow.token) is None
    assert table.close(flow.flow_id) is None
