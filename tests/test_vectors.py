"""The checked-in vectors decode, re-encode byte for byte, and their MACs and signatures check."""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from libp2p.crypto.ed25519 import Ed25519PrivateKey
from libp2p.crypto.serialization import deserialize_public_key
from libp2p.peer.id import ID

from meshp2p import _auth, _gossip, _route
from meshp2p._wire import FrameDecoder, encode_cbor, encode_frame

PROTOCOLS = Path(__file__).resolve().parents[1] / "protocols"


def load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("make_vectors", PROTOCOLS / "make_vectors.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


make_vectors = load_generator()


def vectors(filename: str) -> list[dict[str, Any]]:
    loaded: list[dict[str, Any]] = json.loads((PROTOCOLS / "vectors" / filename).read_text())
    return loaded


def ids(filename: str) -> list[str]:
    return [v["name"] for v in vectors(filename)]


def decode_one(vector: dict[str, Any], max_frame: int) -> dict[str, Any]:
    frame = bytes.fromhex(vector["hex"])
    (decoded,) = FrameDecoder(max_frame).feed(frame)
    assert decoded == make_vectors.from_json(vector["decoded"])
    assert encode_frame(decoded) == frame
    return decoded


@pytest.mark.parametrize("filename", sorted(make_vectors.BUILDERS))
def test_checked_in_vectors_are_what_the_generator_produces(filename: str) -> None:
    text = (PROTOCOLS / "vectors" / filename).read_text()
    assert make_vectors.render(make_vectors.BUILDERS[filename]()) == text


@pytest.mark.parametrize("filename", sorted(make_vectors.BUILDERS))
def test_vector_names_are_unique(filename: str) -> None:
    assert len(set(ids(filename))) == len(ids(filename))


@pytest.mark.parametrize("vector", vectors("auth.json"), ids=ids("auth.json"))
def test_auth_vector_decodes_and_re_encodes_byte_for_byte(vector: dict[str, Any]) -> None:
    decoded = decode_one(vector, _auth.MAX_FRAME)
    message = _auth.parse_auth_message(decoded)
    if set(decoded) <= set(message.to_map()):
        assert encode_frame(message.to_map()).hex() == vector["hex"]


@pytest.mark.parametrize(
    "vector", [v for v in vectors("auth.json") if "check" in v], ids=lambda v: v["name"]
)
def test_auth_vector_macs_check(vector: dict[str, Any]) -> None:
    check = make_vectors.from_json(vector["check"])
    transcript = _auth.transcript(
        check["label"].encode(),
        check["mesh_id"],
        check["initiator_peer_id"],
        check["responder_peer_id"],
        check["nonce_i"],
        check["nonce_r"],
    )
    assert transcript == check["transcript"]
    assert _auth.compute_mac(check["secret"], transcript) == check["mac"]
    assert make_vectors.from_json(vector["decoded"])["mac"] == check["mac"]
    assert ID(check["initiator_peer_id"]).to_base58() == check["initiator_peer_id_base58"]
    assert ID(check["responder_peer_id"]).to_base58() == check["responder_peer_id_base58"]


@pytest.mark.parametrize("vector", vectors("gossip.json"), ids=ids("gossip.json"))
def test_gossip_vector_decodes_and_re_encodes_byte_for_byte(vector: dict[str, Any]) -> None:
    decoded = decode_one(vector, _gossip.MAX_FRAME)
    message = _gossip.parse_gossip_message(decoded)
    assert message is not None
    assert _gossip.encode_gossip_message(message).hex() == vector["hex"]


@pytest.mark.parametrize(
    "vector", [v for v in vectors("gossip.json") if "check" in v], ids=lambda v: v["name"]
)
def test_gossip_vector_signatures_check(vector: dict[str, Any]) -> None:
    check = make_vectors.from_json(vector["check"])
    key = Ed25519PrivateKey.new(check["private_key_seed"])
    public_key = key.get_public_key()
    assert public_key.serialize() == check["public_key"]
    assert ID.from_pubkey(public_key).to_base58() == check["node_id"]
    # The raw check another implementation would do: Ed25519 over the stated payload.
    assert deserialize_public_key(check["public_key"]).verify(
        check["signed_payload"], check["signature"]
    )

    message = _gossip.parse_gossip_message(make_vectors.from_json(vector["decoded"]))
    if isinstance(message, _gossip.Announce):
        signed: Any = message.announcement
        assert _gossip.verify(signed)
        assert signed.signed_payload.startswith(_gossip.ANNOUNCEMENT_DOMAIN)
    else:
        assert isinstance(message, _gossip.Leaving)
        signed = message
        assert _gossip.verify_leaving(signed)
        assert signed.signed_payload.startswith(_gossip.LEAVING_DOMAIN)
    assert signed.signed_payload == check["signed_payload"]
    assert signed.signature == check["signature"]


def test_every_vector_file_has_a_generator() -> None:
    on_disk = {path.name for path in (PROTOCOLS / "vectors").glob("*.json")}
    assert on_disk == set(make_vectors.BUILDERS)


def parse_route(vector: dict[str, Any], decoded: dict[str, Any]) -> _route.RouteMessage:
    # Both sides have a "table" message, so a route vector's name says who sends it.
    if vector["name"].startswith("client: "):
        message = _route.parse_client_message(decoded)
        assert message is not None
        return message
    assert vector["name"].startswith("server: ")
    return _route.parse_server_message(decoded)


@pytest.mark.parametrize("vector", vectors("route.json"), ids=ids("route.json"))
def test_route_vector_decodes_and_re_encodes_byte_for_byte(vector: dict[str, Any]) -> None:
    decoded = decode_one(vector, _route.MAX_REQUEST_FRAME)
    message = parse_route(vector, decoded)
    assert len(bytes.fromhex(vector["hex"])) <= _route.max_frame_of(message) + 9
    if set(decoded) <= set(message.to_map()):
        assert _route.encode(message).hex() == vector["hex"]


@pytest.mark.parametrize(
    "vector", [v for v in vectors("route.json") if "check" in v], ids=lambda v: v["name"]
)
def test_route_vector_table_versions_check(vector: dict[str, Any]) -> None:
    check = make_vectors.from_json(vector["check"])
    table = parse_route(vector, make_vectors.from_json(vector["decoded"]))
    assert isinstance(table, _route.RoutingTable)
    hosts_cbor = encode_cbor(make_vectors.from_json(vector["decoded"])["hosts"])
    assert hosts_cbor == check["hosts_cbor"]
    assert check["hashed"] == check["domain"].encode() + b"\x00" + hosts_cbor
    assert check["hashed"].startswith(_route.TABLE_VERSION_DOMAIN)
    # The raw computation another implementation would do.
    digest = hashlib.sha256(check["hashed"]).digest()
    assert digest == check["sha256"]
    assert (int.from_bytes(digest[:8], "big") >> 11 or 1) == check["version"] == table.version
    assert _route.table_version(table.hosts) == table.version
