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

from meshp2p.inference._gguf import GgufLayout, TensorInfo
from meshp2p.mesh import _auth, _gossip
from meshp2p.route import _protocol as _route
from meshp2p.tensor import _protocol as _tensor
from meshp2p.tensor._protocol import HostRewriter, WorkerRewriter
from meshp2p.tensor._rpc_wire import (
    COMMAND_HEADER_SIZE,
    SEGMENT_RAW,
    SEGMENT_REF,
    SET_TENSOR_GGUF,
    SET_TENSOR_HEADER_SIZE,
    FileRegion,
    Hello,
    RpcCommand,
    RpcEvent,
    RpcRequestParser,
    RpcTensor,
    TensorData,
    TensorUpload,
    TensorUploadEnd,
    encode_command,
    encode_raw_segment,
    encode_ref_segment,
    encode_set_tensor,
)
from meshp2p.transport._wire import FrameDecoder, encode_cbor, encode_frame

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


# /mesh/rpc-tensor: "host: " and "worker: " vectors are hello frames, "rpc: " vectors one
# llama.cpp RPC command of the host -> worker direction (not a frame).


def rpc_tensor_vectors(prefix: str) -> list[dict[str, Any]]:
    return [v for v in vectors("rpc-tensor.json") if v["name"].startswith(prefix)]


def rpc_tensor_vector(name: str) -> dict[str, Any]:
    (found,) = [v for v in vectors("rpc-tensor.json") if v["name"] == name]
    return found


RPC_HELLO = encode_command(RpcCommand.HELLO, bytes(24))
HELLO_VECTORS = rpc_tensor_vectors("host: ") + rpc_tensor_vectors("worker: ")
RPC_VECTORS = rpc_tensor_vectors("rpc: ")
GGUF_VECTORS = [v for v in RPC_VECTORS if "check" in v]


def test_rpc_tensor_vectors_cover_every_message() -> None:
    names = ids("rpc-tensor.json")
    assert len(HELLO_VECTORS) + len(RPC_VECTORS) == len(names)
    assert len(GGUF_VECTORS) == 2
    kinds = set()
    for v in HELLO_VECTORS:
        decoded = make_vectors.from_json(v["decoded"])
        kinds.add((v["name"].split(":")[0], decoded["t"], *sorted(decoded.keys() - {"t"})))
    assert ("host", "hello", "rpc", "v", "worker") in kinds
    assert ("host", "hello", "ext", "files", "memory", "rpc", "v", "worker") in kinds
    assert ("worker", "hello", "ext", "files", "rpc", "v") in kinds
    assert ("worker", "refused", "code", "message") in kinds


@pytest.mark.parametrize("vector", HELLO_VECTORS, ids=lambda v: v["name"])
def test_rpc_tensor_hello_vector_decodes_and_re_encodes_byte_for_byte(
    vector: dict[str, Any],
) -> None:
    decoded = decode_one(vector, _tensor.MAX_FRAME)
    message: _tensor.HostHello | _tensor.WorkerHello | _tensor.Refused
    if vector["name"].startswith("host: "):
        message = _tensor.parse_host_hello(decoded)
    else:
        message = _tensor.parse_worker_reply(decoded)
    extra = {k: v for k, v in decoded.items() if k not in message.to_map()}
    assert encode_frame({**message.to_map(), **extra}).hex() == vector["hex"]
    if extra:  # a v1 receiver reads the same message without the unknown keys
        assert encode_frame(message.to_map()).hex() != vector["hex"]


def test_rpc_tensor_worker_hello_vector_answers_the_host_hello_vector() -> None:
    host = _tensor.parse_host_hello(
        make_vectors.from_json(
            rpc_tensor_vector("host: hello (files, gguf-ref, memory)")["decoded"]
        )
    )
    worker = _tensor.parse_worker_reply(
        make_vectors.from_json(
            rpc_tensor_vector("worker: hello (holds one of the files, accepts gguf-ref)")["decoded"]
        )
    )
    assert isinstance(worker, _tensor.WorkerHello)
    assert host.memory == 536_870_912 and len(host.files) == 2
    assert worker.files == host.files[:1] and worker.ext == (_tensor.EXT_GGUF_REF,)
    check = make_vectors.from_json(GGUF_VECTORS[0]["check"])
    assert worker.files == (check["file_sha256"].hex(),)
    assert _tensor.answer_hello(host, node_id=host.worker, files=worker.files) == worker


def fold_rpc_events(command: int, events: list[RpcEvent]) -> dict[str, Any]:
    """One command's events in the vectors' decoded form."""
    if isinstance(events[0], Hello):
        assert len(events) == 1
        return {"cmd": RpcCommand.HELLO.value, "size": 24, "conn_caps": events[0].conn_caps}
    upload, *body, end = events
    assert isinstance(upload, TensorUpload) and isinstance(end, TensorUploadEnd)
    out: dict[str, Any] = {
        "cmd": command,
        "size": upload.payload_length,
        "tensor": make_vectors.rpc_tensor_json(upload.tensor),
        "cache_flag": upload.cache_flag,
        "offset": upload.offset,
    }
    if command == RpcCommand.SET_TENSOR:
        assert all(isinstance(e, TensorData) for e in body)
        out["data"] = b"".join(bytes(e.data) for e in body if isinstance(e, TensorData))
        return out
    segments: list[dict[str, Any]] = []
    for e in body:
        if isinstance(e, TensorData):  # fed whole: one event per RAW segment
            segments.append({"kind": SEGMENT_RAW, "data": bytes(e.data)})
        else:
            assert isinstance(e, FileRegion)
            segments.append(
                {
                    "kind": SEGMENT_REF,
                    "sha256": e.sha256,
                    "file_offset": e.offset,
                    "length": e.length,
                }
            )
    out["segments"] = segments
    return out


def encode_rpc_vector(decoded: dict[str, Any]) -> bytes:
    """The bytes of a decoded "rpc: " vector, built with meshp2p's encoders."""
    if decoded["cmd"] == RpcCommand.HELLO:
        return encode_command(RpcCommand.HELLO, decoded["conn_caps"])
    fields = dict(decoded["tensor"])
    for key in ("ne", "nb", "op_params", "src"):
        fields[key] = tuple(fields[key])
    tensor = RpcTensor(**fields)
    if decoded["cmd"] == RpcCommand.SET_TENSOR:
        return encode_set_tensor(
            tensor, decoded["offset"], decoded["data"], cache_flag=decoded["cache_flag"]
        )
    assert decoded["cmd"] == SET_TENSOR_GGUF
    header = (
        tensor.encode() + bytes((decoded["cache_flag"],)) + decoded["offset"].to_bytes(8, "little")
    )
    out: bytes = bytes((SET_TENSOR_GGUF,)) + decoded["size"].to_bytes(8, "little") + header
    for s in decoded["segments"]:
        if s["kind"] == SEGMENT_RAW:
            out += encode_raw_segment(s["data"])
        else:
            out += encode_ref_segment(s["sha256"], s["file_offset"], s["length"])
    return out


def vector_file(check: dict[str, Any]) -> tuple[dict[bytes, int], _tensor.FileReader, GgufLayout]:
    file: bytes = check["file"]
    sha: bytes = check["file_sha256"]
    assert hashlib.sha256(file).digest() == sha

    def read(digest: bytes, offset: int, length: int) -> bytes:
        assert digest == sha and offset + length <= len(file)
        return file[offset : offset + length]

    tensors = tuple(
        TensorInfo(t["name"], 0, (t["n_bytes"],), t["offset"], t["n_bytes"])
        for t in check["tensors"]
    )
    return {sha: len(file)}, read, GgufLayout(Path("vector.gguf"), "test", 1, len(file), tensors)


@pytest.mark.parametrize("vector", RPC_VECTORS, ids=lambda v: v["name"])
def test_rpc_tensor_rpc_vector_decodes_and_re_encodes_byte_for_byte(
    vector: dict[str, Any],
) -> None:
    wire = bytes.fromhex(vector["hex"])
    decoded = make_vectors.from_json(vector["decoded"])
    assert int.from_bytes(wire[1:COMMAND_HEADER_SIZE], "little") == decoded["size"]
    assert len(wire) == COMMAND_HEADER_SIZE + decoded["size"] or "segments" in decoded
    gguf_files = (
        vector_file(make_vectors.from_json(vector["check"]))[0] if "check" in vector else None
    )
    parser = RpcRequestParser(gguf_files=gguf_files)
    if wire != RPC_HELLO:
        parser.feed(RPC_HELLO)
    assert fold_rpc_events(wire[0], parser.feed(wire)) == decoded
    assert parser.at_boundary
    assert encode_rpc_vector(decoded) == wire


@pytest.mark.parametrize("vector", GGUF_VECTORS, ids=lambda v: v["name"])
def test_rpc_tensor_gguf_vector_expands_to_its_set_tensor(vector: dict[str, Any]) -> None:
    check = make_vectors.from_json(vector["check"])
    files, read, _ = vector_file(check)
    plain = bytes.fromhex(rpc_tensor_vector(check["expands_to"])["hex"])
    worker = WorkerRewriter(files, read)
    out = b"".join(bytes(c) for c in worker.feed(RPC_HELLO + bytes.fromhex(vector["hex"])))
    worker.end_of_stream()
    assert out == RPC_HELLO + plain
    refs = [s for s in make_vectors.from_json(vector["decoded"])["segments"] if "sha256" in s]
    assert worker.counters.bytes_by_reference == sum(s["length"] for s in refs) > 0


@pytest.mark.parametrize("vector", GGUF_VECTORS, ids=lambda v: v["name"])
def test_rpc_tensor_host_rewrites_the_set_tensor_into_the_gguf_vector(
    vector: dict[str, Any],
) -> None:
    check = make_vectors.from_json(vector["check"])
    _, read, layout = vector_file(check)
    plain = RPC_HELLO + bytes.fromhex(rpc_tensor_vector(check["expands_to"])["hex"])
    host = HostRewriter({check["file_sha256"].hex(): layout}, read)
    # llama.cpp's bytes up to the upload's data, then the data in the stated pieces.
    start = len(RPC_HELLO) + COMMAND_HEADER_SIZE + SET_TENSOR_HEADER_SIZE
    piece = check["host_piece"]
    out = [*host.feed(plain[:start])]
    for at in range(start, len(plain), piece):
        out += host.feed(plain[at : at + piece])
    host.end_of_stream()
    assert b"".join(bytes(c) for c in out) == RPC_HELLO + bytes.fromhex(vector["hex"])
    assert host.counters.uploads == host.counters.uploads_by_reference == 1
