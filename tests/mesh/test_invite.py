"""Invite tokens and the mesh credentials a node keeps: pure encode/decode and files."""

from __future__ import annotations

import base64
import stat
from pathlib import Path

import cbor2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshp2p._errors import ConfigError
from meshp2p.mesh._invite import (
    InviteError,
    InviteToken,
    MeshCredentials,
    load_credentials,
    save_credentials,
    stored_bootstrap,
)

PEER = "12D3KooWEKVEnb4XqKAMNqoGtDVpdHL1P2rNvS6rQJq15EhrALEW"
ADDRS = (
    f"/ip4/127.0.0.1/udp/4001/quic-v1/p2p/{PEER}",
    f"/ip4/192.0.2.7/tcp/4001/p2p/{PEER}",
)


def token(**overrides: object) -> str:
    body: dict[str, object] = {"v": 1, "m": bytes(8), "s": bytes(range(32)), "a": []}
    body.update(overrides)
    raw = cbor2.dumps(body)
    return "mp1." + base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def test_token_round_trips_and_is_url_safe() -> None:
    creds = MeshCredentials.new()
    text = InviteToken(creds, ADDRS).encode()
    assert text.startswith("mp1.")
    assert all(ch.isalnum() or ch in "-_." for ch in text)
    decoded = InviteToken.decode(text)
    assert decoded.credentials == creds
    assert decoded.bootstrap == ADDRS


def test_credentials_repr_hides_the_secret() -> None:
    creds = MeshCredentials.new()
    assert creds.secret.hex() not in repr(creds)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("hello", "must start with 'mp1.'"),
        ("mp1.***", "damaged"),
        (token(v=2, a=[]), "version 2 is not supported"),
        (token(m=b"short"), "no valid mesh id"),
        (token(s=b"short"), "no valid mesh secret"),
        (token(a=[]), "no node addresses"),
        ("mp1." + base64.urlsafe_b64encode(cbor2.dumps([1, 2])).decode(), "not a map"),
    ],
)
def test_bad_tokens_get_one_line_errors(text: str, message: str) -> None:
    with pytest.raises(InviteError, match=message) as info:
        InviteToken.decode(text)
    assert "\n" not in str(info.value)


def test_address_without_peer_id_is_refused() -> None:
    from multiaddr import Multiaddr

    bad = token(a=[Multiaddr("/ip4/127.0.0.1/tcp/1").to_bytes()])
    with pytest.raises(InviteError, match="no /p2p/ peer id"):
        InviteToken.decode(bad)


@given(st.text(max_size=300))
def test_decoding_arbitrary_text_raises_only_invite_error(text: str) -> None:
    try:
        InviteToken.decode(text)
    except InviteError:
        pass


@given(st.binary(max_size=300))
def test_decoding_arbitrary_payload_raises_only_invite_error(raw: bytes) -> None:
    try:
        InviteToken.decode("mp1." + base64.urlsafe_b64encode(raw).decode())
    except InviteError:
        pass


def test_credentials_are_kept_private_in_the_home(tmp_path: Path) -> None:
    creds = MeshCredentials.new()
    assert load_credentials(tmp_path) is None
    save_credentials(tmp_path, creds, ADDRS)
    assert load_credentials(tmp_path) == creds
    assert stored_bootstrap(tmp_path) == ADDRS
    mode = stat.S_IMODE((tmp_path / "mesh.json").stat().st_mode)
    assert mode == 0o600


def test_damaged_credentials_file_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "mesh.json").write_text("{not json")
    with pytest.raises(ConfigError, match="damaged"):
        load_credentials(tmp_path)
