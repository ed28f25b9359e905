"""Write the /mesh/* test vectors (protocols/vectors/*.json) from fixed keys, secrets and nonces.

Deterministic: Ed25519 signatures and HMACs depend only on their inputs, so running this
again rewrites identical files. `python protocols/make_vectors.py --check` fails if the
checked-in files differ from what the code produces now.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from libp2p.crypto.ed25519 import Ed25519PrivateKey  # noqa: E402
from libp2p.peer.id import ID  # noqa: E402

from meshp2p import _auth, _gossip, _route  # noqa: E402
from meshp2p._wire import FrameDecoder, encode_cbor, encode_frame  # noqa: E402

VECTOR_DIR = Path(__file__).resolve().parent / "vectors"

# Test-only material. Never use these keys or this secret for a real mesh.
MESH_ID = "test-mesh"
SEED_A = hashlib.sha256(b"meshp2p test vector key A").digest()
SEED_B = hashlib.sha256(b"meshp2p test vector key B").digest()
SECRET = bytes(range(0x40, 0x60))
NONCE_I = bytes(range(0x00, 0x20))
NONCE_R = bytes(range(0x20, 0x40))


def to_json(value: Any) -> Any:
    """The JSON form of a decoded message: byte strings become {"hex": "..."}."""
    if isinstance(value, bytes):
        return {"hex": value.hex()}
    if isinstance(value, dict):
        return {k: to_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [to_json(v) for v in value]
    return value


def from_json(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"hex"} and isinstance(value["hex"], str):
            return bytes.fromhex(value["hex"])
        return {k: from_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [from_json(v) for v in value]
    return value


def vector(name: str, msg: dict[str, Any], **check: Any) -> dict[str, Any]:
    frame = encode_frame(msg)
    # Store what a receiver decodes (keys in wire order), not what we meant to send.
    (decoded,) = FrameDecoder(max_frame=len(frame)).feed(frame)
    out: dict[str, Any] = {"name": name, "hex": frame.hex(), "decoded": to_json(decoded)}
    if check:
        out["check"] = to_json(check)
    return out


def key(seed: bytes) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.new(seed)


def auth_vectors() -> list[dict[str, Any]]:
    peer_i = ID.from_pubkey(key(SEED_A).get_public_key())
    peer_r = ID.from_pubkey(key(SEED_B).get_public_key())
    initiator = _auth.AuthInitiator(
        secret=SECRET,
        mesh_id=MESH_ID,
        local_peer_id=peer_i.to_bytes(),
        remote_peer_id=peer_r.to_bytes(),
        nonce=NONCE_I,
    )
    responder = _auth.AuthResponder(
        secret=SECRET,
        mesh_id=MESH_ID,
        local_peer_id=peer_r.to_bytes(),
        remote_peer_id=peer_i.to_bytes(),
        nonce=NONCE_R,
    )
    hello = initiator.start()
    challenge = responder.receive(hello)
    assert challenge is not None
    proof = initiator.receive(challenge)
    assert proof is not None
    result = responder.receive(proof)
    assert result is not None
    assert initiator.receive(result) is None
    assert initiator.peer_verified and responder.peer_verified

    inputs = {
        "secret": SECRET,
        "mesh_id": MESH_ID,
        "initiator_peer_id": peer_i.to_bytes(),
        "initiator_peer_id_base58": peer_i.to_base58(),
        "responder_peer_id": peer_r.to_bytes(),
        "responder_peer_id_base58": peer_r.to_base58(),
        "nonce_i": NONCE_I,
        "nonce_r": NONCE_R,
    }

    def mac_check(label: bytes) -> dict[str, Any]:
        transcript = _auth.transcript(
            label, MESH_ID, peer_i.to_bytes(), peer_r.to_bytes(), NONCE_I, NONCE_R
        )
        return {
            **inputs,
            "label": label.decode(),
            "transcript": transcript,
            "mac": _auth.compute_mac(SECRET, transcript),
        }

    return [
        vector("hello", hello.to_map()),
        vector("challenge", challenge.to_map(), **mac_check(_auth.RESPONDER_LABEL)),
        vector("proof", proof.to_map(), **mac_check(_auth.INITIATOR_LABEL)),
        vector("result ok", result.to_map()),
        vector("result refused: wrong mesh id", _auth.AuthResult(False, "mesh_id").to_map()),
        vector(
            "hello with an unknown key (ignored by v1 receivers)",
            {**hello.to_map(), "future_option": [1, 2]},
        ),
    ]


def gossip_vectors() -> list[dict[str, Any]]:
    key_a, key_b = key(SEED_A), key(SEED_B)
    host = _gossip.sign(
        {
            "seq": 1_767_225_600_000,
            "mesh_id": MESH_ID,
            "addrs": ["/ip4/192.0.2.10/tcp/4001", "/ip6/2001:db8::10/udp/4001/quic-v1"],
            "role": "host",
            "models_served": ["gemma-3-270m-q4_k_m"],
            "models_on_disk": [
                _gossip.ModelFile(
                    "gemma-3-270m-q4_k_m", 253_114_368, hashlib.sha256(b"model bytes").hexdigest()
                )
            ],
            "memory_free": 12_884_901_888,
            "memory_total": 17_179_869_184,
            "request_rates": {"gemma-3-270m-q4_k_m": 12.5},
            "version": "0.1.0",
        },
        key_a,
    )
    worker = _gossip.sign(
        {
            "seq": 1_767_225_600_001,
            "mesh_id": MESH_ID,
            "addrs": [],
            "role": "worker",
            "models_served": [],
            "models_on_disk": [],
            "memory_free": 0,
            "memory_total": 8_589_934_592,
            "request_rates": {},
            "version": "0.1.0",
        },
        key_b,
    )
    # A newer peer's announcement: the unknown key is signed, kept and relayed as received.
    future = _gossip.sign(
        {
            "seq": 1_767_225_660_000,
            "mesh_id": MESH_ID,
            "addrs": ["/ip4/192.0.2.11/tcp/4001"],
            "role": "worker",
            "models_served": [],
            "models_on_disk": [],
            "memory_free": 1024,
            "memory_total": 2048,
            "request_rates": {"gemma-3-270m-q4_k_m": 0.25},
            "version": "0.2.0",
            "gpu": {"name": "example", "vram": 8_589_934_592},
        },
        key_b,
    )
    leaving = _gossip.sign_leaving(1_767_225_700_000, MESH_ID, key_a)

    def signed(seed: bytes, payload: bytes, signature: bytes) -> dict[str, Any]:
        public_key = key(seed).get_public_key()
        return {
            "private_key_seed": seed,
            "public_key": public_key.serialize(),
            "node_id": ID.from_pubkey(public_key).to_base58(),
            "signed_payload": payload,
            "signature": signature,
        }

    def announce(name: str, a: _gossip.Announcement, seed: bytes) -> dict[str, Any]:
        return vector(
            name,
            _gossip.Announce(a).to_map(),
            **signed(seed, a.signed_payload, a.signature),
        )

    return [
        announce("announce: host serving one model", host, SEED_A),
        announce("announce: worker with empty lists", worker, SEED_B),
        announce("announce: unknown key covered by the signature", future, SEED_B),
        vector(
            "digest", _gossip.Digest({host.node_id: host.seq, worker.node_id: worker.seq}).to_map()
        ),
        vector(
            "digest: empty (heartbeat of a node that knows nobody)", _gossip.Digest({}).to_map()
        ),
        vector("want", _gossip.Want((host.node_id, worker.node_id)).to_map()),
        vector(
            "leaving",
            leaving.to_map(),
            **signed(SEED_A, leaving.signed_payload, leaving.signature),
        ),
        vector("dead", _gossip.Dead(worker.node_id, worker.seq).to_map()),
    ]


def route_vectors() -> list[dict[str, Any]]:
    # Names start with the sending side: both sides have a message of type "table".
    node_a = ID.from_pubkey(key(SEED_A).get_public_key()).to_base58()
    node_b = ID.from_pubkey(key(SEED_B).get_public_key()).to_base58()
    chat = (
        b'{"model":"gemma-3-270m-q4_k_m","messages":[{"role":"user","content":"Hi"}],"stream":true}'
    )
    completion = b'{"model":"gemma-3-270m-q4_k_m","prompt":"Once upon a time","max_tokens":16}'
    sse = (
        b'data: {"id":"chatcmpl-1","object":"chat.completion.chunk","choices":'
        b'[{"index":0,"delta":{"content":"Hello"}}]}\n\n'
    )
    request = _route.RouteRequest("req-0001", "chat", chat)
    hosts = [
        _route.HostEntry(
            node_a,
            ("/ip4/192.0.2.10/tcp/4001", "/ip6/2001:db8::10/udp/4001/quic-v1"),
            ("gemma-3-270m-q4_k_m",),
            2,
        ),
        _route.HostEntry(node_b, ("/ip4/192.0.2.11/tcp/4001",), ("gemma-3-270m-q4_k_m",), 0),
    ]
    table = _route.make_table(hosts)
    empty = _route.make_table([])

    def version_check(t: _route.RoutingTable) -> dict[str, Any]:
        hosts_cbor = encode_cbor([h.to_map() for h in t.hosts])
        payload = _route.TABLE_VERSION_DOMAIN + hosts_cbor
        return {
            "domain": _route.TABLE_VERSION_DOMAIN.rstrip(b"\0").decode(),  # then one 0x00
            "hosts_cbor": hosts_cbor,
            "hashed": payload,
            "sha256": hashlib.sha256(payload).digest(),
            "version": t.version,
        }

    return [
        vector("client: request (chat, streaming)", request.to_map()),
        vector(
            "client: request (completion)",
            _route.RouteRequest("req-0002", "completion", completion).to_map(),
        ),
        vector(
            "client: request with an unknown key (ignored by v1 servers)",
            {**request.to_map(), "priority": 3},
        ),
        vector("client: table request (holds no table)", _route.TableRequest(0).to_map()),
        vector(
            "client: table request (holds a version)", _route.TableRequest(table.version).to_map()
        ),
        vector(
            "server: head",
            _route.ResponseHead(
                200, {"content-type": "text/event-stream", "cache-control": "no-cache"}
            ).to_map(),
        ),
        vector("server: data", _route.ResponseData(sse).to_map()),
        vector("server: end", _route.ResponseEnd().to_map()),
        vector(
            "server: unavailable (model not served here)",
            _route.Unavailable("not_served", "model 'x' is not served by this node").to_map(),
        ),
        vector(
            "server: unavailable (unknown request type)",
            _route.Unavailable("unsupported", "unknown request type 'embed'").to_map(),
        ),
        vector(
            "server: error after the head",
            _route.RouteError("worker_failed", "the inference worker exited").to_map(),
        ),
        vector("server: table", table.to_map(), **version_check(table)),
        vector("server: table (no hosts)", empty.to_map(), **version_check(empty)),
        vector("server: unchanged", _route.TableUnchanged(table.version).to_map()),
    ]


BUILDERS: dict[str, Callable[[], list[dict[str, Any]]]] = {
    "auth.json": auth_vectors,
    "gossip.json": gossip_vectors,
    "route.json": route_vectors,
}


def render(vectors: list[dict[str, Any]]) -> str:
    return json.dumps(vectors, indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str]) -> int:
    check = "--check" in argv
    stale = []
    for filename, build in BUILDERS.items():
        path = VECTOR_DIR / filename
        text = render(build())
        if check:
            if not path.exists() or path.read_text() != text:
                stale.append(filename)
        else:
            VECTOR_DIR.mkdir(exist_ok=True)
            path.write_text(text)
    if stale:
        print(f"stale vectors: {', '.join(stale)}; run python protocols/make_vectors.py")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
