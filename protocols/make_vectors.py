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

from meshp2p.api._resume import Resume  # noqa: E402
from meshp2p.inference._gguf import TensorInfo  # noqa: E402
from meshp2p.mesh import _auth, _gossip  # noqa: E402
from meshp2p.mesh._state import root_of  # noqa: E402
from meshp2p.route import _protocol as _route  # noqa: E402
from meshp2p.tensor import _protocol as _tensor  # noqa: E402
from meshp2p.tensor._rpc_wire import (  # noqa: E402
    CONN_CAPS_SIZE,
    SEGMENT_RAW,
    SEGMENT_REF,
    SET_TENSOR_GGUF,
    RpcCommand,
    RpcTensor,
    encode_command,
    encode_set_tensor,
)
from meshp2p.transport._wire import FrameDecoder, encode_cbor, encode_frame  # noqa: E402

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
    buckets = tuple(bytes([i]) * _gossip.SUMMARY_HASH_LEN for i in range(_gossip.SUMMARY_BUCKETS))
    summary = _gossip.Summary(buckets)

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
        vector("summary (heartbeat of a mesh of more than 16 nodes)", summary.to_map()),
        vector("tick (heartbeat while two views agree)", _gossip.Tick(root_of(buckets)).to_map()),
        vector(
            "demand (one push-sum share)",
            _gossip.DemandShare(14_723, 0.5, {"gemma-3-270m-Q4_K_M": 12.5, "qwen": 3.25}).to_map(),
        ),
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
    responses = (
        b'{"model":"gemma-3-270m-q4_k_m","input":[{"role":"user","content":"Hi"}],'
        b'"instructions":"Be brief.","stream":true}'
    )
    messages = (
        b'{"model":"gemma-3-270m-q4_k_m","max_tokens":64,"system":"Be brief.",'
        b'"messages":[{"role":"user","content":[{"type":"text","text":"Hi"}]}]}'
    )
    count_tokens = b'{"model":"gemma-3-270m-q4_k_m","messages":[{"role":"user","content":"Hi"}]}'
    embeddings = (
        b'{"model":"gemma-3-270m-q4_k_m","input":["Hi","Hello"],"encoding_format":"base64"}'
    )
    messages_event = (
        b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
        b'"delta":{"type":"text_delta","text":"Hello"}}\n\n'
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
            "client: request (responses, streaming)",
            _route.RouteRequest("req-0003", "responses", responses).to_map(),
        ),
        vector(
            "client: request (messages)",
            _route.RouteRequest("req-0004", "messages", messages).to_map(),
        ),
        vector(
            "client: request (count_tokens)",
            _route.RouteRequest("req-0005", "count_tokens", count_tokens).to_map(),
        ),
        vector(
            "client: request (embeddings)",
            _route.RouteRequest("req-0006", "embeddings", embeddings).to_map(),
        ),
        vector(
            "client: request with progress (resumable chat)",
            _route.RouteRequest("req-0007", "chat", chat, progress=True).to_map(),
        ),
        vector(
            "client: request resuming an answer another host broke off",
            _route.RouteRequest(
                "req-0008",
                "chat",
                chat,
                progress=True,
                resume=Resume((2, 4521, 236764, 107), "chatcmpl-5f0c2a9e", 1767225600),
            ).to_map(),
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
        vector(
            "server: data (a messages stream event)", _route.ResponseData(messages_event).to_map()
        ),
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


# rpc-tensor: a synthetic 128-byte "GGUF file" whose bytes 32..127 hold two tensors. Not a
# real GGUF (only the tensors' byte ranges matter to the extension); its SHA-256 is the
# one the hellos name.
TENSOR_FILE = b"".join(
    hashlib.sha256(b"meshp2p rpc-tensor vector file %d" % i).digest() for i in range(4)
)
TENSOR_FILE_LAYOUT = (
    TensorInfo("blk.0.attn_q.weight", 0, (16,), 32, 64),
    TensorInfo("blk.0.attn_k.weight", 0, (8,), 96, 32),
)
RPC_HELLO = encode_command(RpcCommand.HELLO, bytes(CONN_CAPS_SIZE))


def rpc_tensor_json(t: RpcTensor) -> dict[str, Any]:
    return {
        "id": t.id,
        "type": t.type,
        "buffer": t.buffer,
        "ne": list(t.ne),
        "nb": list(t.nb),
        "op": t.op,
        "op_params": list(t.op_params),
        "flags": t.flags,
        "src": list(t.src),
        "view_src": t.view_src,
        "view_offs": t.view_offs,
        "data": t.data,
        "name": t.name,
        "use_count": t.use_count,
    }


def rpc_vector(name: str, wire: bytes, decoded: dict[str, Any], **check: Any) -> dict[str, Any]:
    """A vector of llama.cpp RPC bytes (not a frame): ``hex`` is one whole command."""
    out: dict[str, Any] = {"name": name, "hex": wire.hex(), "decoded": to_json(decoded)}
    if check:
        out["check"] = to_json(check)
    return out


def rpc_tensor_vectors() -> list[dict[str, Any]]:
    # Names start with the sender: "host: " and "worker: " are hello frames, "rpc: " is one
    # llama.cpp RPC command as it appears after the hellos (host -> worker direction).
    worker = ID.from_pubkey(key(SEED_B).get_public_key()).to_base58()
    sha = hashlib.sha256(TENSOR_FILE).digest()
    other = hashlib.sha256(b"a file the worker does not hold").hexdigest()
    full = _tensor.HostHello(
        worker=worker,
        files=(sha.hex(), other),
        ext=(_tensor.EXT_GGUF_REF,),
        memory=536_870_912,
    )
    answer = _tensor.answer_hello(full, node_id=worker, files=[sha.hex()])
    assert isinstance(answer, _tensor.WorkerHello) and answer.ext

    q = TENSOR_FILE_LAYOUT[0]
    weight = RpcTensor(
        id=0x5555_0000_0001,
        type=q.ggml_type,
        buffer=0x5555_0000_2000,
        ne=(16, 1, 1, 1),
        nb=(4, 64, 64, 64),
        data=0x7F00_0000_1000,
        name=q.name,
    )
    # The whole tensor, as in the file; then bytes 16..63 of it, whose first and last 8
    # bytes differ from the file (the host compares in 8-byte pieces here).
    whole = TENSOR_FILE[q.offset : q.offset + q.n_bytes]
    part_offset = 16
    part = b"\xff" * 8 + TENSOR_FILE[q.offset + 24 : q.offset + 56] + b"\xee" * 8
    assert part[:8] != TENSOR_FILE[q.offset + 16 : q.offset + 24]
    assert part[-8:] != TENSOR_FILE[q.offset + 56 : q.offset + 64]

    def upload(command: int, data_length: int, offset: int) -> dict[str, Any]:
        return {
            "cmd": command,
            "size": 305 + data_length,
            "tensor": rpc_tensor_json(weight),
            "cache_flag": 0,
            "offset": offset,
        }

    def raw(data: bytes) -> dict[str, Any]:
        return {"kind": SEGMENT_RAW, "data": data}

    def ref(file_offset: int, length: int) -> dict[str, Any]:
        return {"kind": SEGMENT_REF, "sha256": sha, "file_offset": file_offset, "length": length}

    def gguf(segments: list[dict[str, Any]]) -> bytes:
        out = b""
        for s in segments:
            if s["kind"] == SEGMENT_RAW:
                out += bytes((SEGMENT_RAW,)) + len(s["data"]).to_bytes(4, "little") + s["data"]
            else:
                out += (
                    bytes((SEGMENT_REF,))
                    + s["sha256"]
                    + s["file_offset"].to_bytes(8, "little")
                    + s["length"].to_bytes(8, "little")
                )
        return out

    def file_check(expands_to: str, host_piece: int) -> dict[str, Any]:
        return {
            "file": TENSOR_FILE,
            "file_sha256": sha,
            "tensors": [
                {"name": t.name, "offset": t.offset, "n_bytes": t.n_bytes}
                for t in TENSOR_FILE_LAYOUT
            ],
            "expands_to": expands_to,
            "host_piece": host_piece,
        }

    plain_whole = encode_set_tensor(weight, 0, whole)
    plain_part = encode_set_tensor(weight, part_offset, part)
    whole_segments = [ref(q.offset, q.n_bytes)]
    part_segments = [raw(part[:8]), ref(q.offset + 24, 32), raw(part[-8:])]

    def by_reference(plain: bytes, segments: list[dict[str, Any]]) -> bytes:
        return bytes((SET_TENSOR_GGUF,)) + plain[1 : 9 + 305] + gguf(segments)

    set_whole = "rpc: SET_TENSOR (a whole tensor, equal to the file)"
    set_part = "rpc: SET_TENSOR (part of a tensor, first and last 8 bytes differ from the file)"
    return [
        vector("host: hello (no files, no extension)", _tensor.HostHello(worker=worker).to_map()),
        vector("host: hello (files, gguf-ref, memory)", full.to_map()),
        vector(
            "host: hello with an unknown key (ignored by v1 workers)",
            {**full.to_map(), "priority": 3},
        ),
        vector("worker: hello (holds one of the files, accepts gguf-ref)", answer.to_map()),
        vector("worker: hello (holds none of the files)", _tensor.WorkerHello().to_map()),
        vector(
            "worker: refused (version)",
            _tensor.answer_hello(
                _tensor.HostHello(worker=worker, rpc=(8, 0, 0)), node_id=worker, files=()
            ).to_map(),
        ),
        vector(
            "worker: refused (not_worker)",
            _tensor.answer_hello(
                _tensor.HostHello(worker="12D3KooWSomeoneElse"), node_id=worker, files=()
            ).to_map(),
        ),
        rpc_vector(
            "rpc: HELLO (conn_caps zeroed by the host tunnel)",
            RPC_HELLO,
            {"cmd": RpcCommand.HELLO.value, "size": CONN_CAPS_SIZE, "conn_caps": bytes(24)},
        ),
        rpc_vector(set_whole, plain_whole, {**upload(6, len(whole), 0), "data": whole}),
        rpc_vector(
            "rpc: SET_TENSOR_GGUF (the same upload as one REF)",
            by_reference(plain_whole, whole_segments),
            {**upload(SET_TENSOR_GGUF, len(whole), 0), "segments": whole_segments},
            **file_check(set_whole, 8),
        ),
        rpc_vector(set_part, plain_part, {**upload(6, len(part), part_offset), "data": part}),
        rpc_vector(
            "rpc: SET_TENSOR_GGUF (the same upload as RAW, REF, RAW)",
            by_reference(plain_part, part_segments),
            {**upload(SET_TENSOR_GGUF, len(part), part_offset), "segments": part_segments},
            **file_check(set_part, 8),
        ),
    ]


# Discovery (protocols/discovery.md): Nostr events, not CBOR frames. BIP-340 signatures
# are deterministic given their auxiliary randomness, fixed here to zeros.
NOSTR_SECRET = hashlib.sha256(b"meshp2p test vector nostr key").digest()
NOSTR_AUX = bytes(32)
DISCOVERY_TIME = 1_800_000_000
DISCOVERY_MESH_ID = "0011223344556677"
RENDEZVOUS_NONCE = bytes(range(0x60, 0x6C))


def discovery_vectors() -> list[dict[str, Any]]:
    from meshp2p.discovery import _listing, _nostr

    key = _nostr.NostrKey(NOSTR_SECRET)
    note = key.sign(1, [["t", "meshp2p"]], "hello, nostr", DISCOVERY_TIME, aux=NOSTR_AUX)
    listing = _listing.MeshListing(
        mesh_id=DISCOVERY_MESH_ID,
        invite="mp1.test-vector-token",
        name="poker-night",
        region="eu-west",
        models_served=("gemma-3-270m-Q4_K_M",),
        models_on_disk=("gemma-3-270m-Q4_K_M", "Llama-3.2-1B-Instruct-Q4_K_M"),
        memory_total=32 * 2**30,
        nodes=3,
        clients=1,
        max_clients=20,
        version="0.1.0",
        publisher="12D3KooWTestPublisher",
    )
    listed = _listing.listing_event(key, listing, DISCOVERY_TIME, aux=NOSTR_AUX)
    record = _listing.RendezvousRecord(
        "12D3KooWTestMember", ("/ip4/192.0.2.7/udp/4001/quic-v1/p2p/12D3KooWTestMember",), 17
    )
    sealed = _listing.rendezvous_event(
        key, SECRET, record, DISCOVERY_TIME, nonce=RENDEZVOUS_NONCE, aux=NOSTR_AUX
    )
    return [
        {
            "name": "signed-event",
            "event": note.to_json(),
            "check": {"secret_key": NOSTR_SECRET.hex(), "aux": NOSTR_AUX.hex()},
        },
        {
            "name": "mesh-listing",
            "event": listed.to_json(),
            "check": {"listing": json.loads(listed.content)},
        },
        {
            "name": "rendezvous-record",
            "event": sealed.to_json(),
            "check": {
                "mesh_secret": SECRET.hex(),
                "key": _listing.rendezvous_key(SECRET).hex(),
                "tag": _listing.rendezvous_tag(SECRET, DISCOVERY_TIME),
                "nonce": RENDEZVOUS_NONCE.hex(),
                "record": {"node": record.node_id, "addrs": list(record.addrs), "at": record.at},
            },
        },
    ]


BUILDERS: dict[str, Callable[[], list[dict[str, Any]]]] = {
    "discovery.json": discovery_vectors,
    "auth.json": auth_vectors,
    "gossip.json": gossip_vectors,
    "route.json": route_vectors,
    "rpc-tensor.json": rpc_tensor_vectors,
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
