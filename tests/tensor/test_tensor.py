"""/mesh/rpc-tensor sans I/O: the hellos, the gguf-ref parser extension, the tunnels' rewriting.

The rewriting is checked against a synthetic GGUF layout over an in-memory "file": whatever
llama.cpp sends and however the bytes are cut, host tunnel then worker tunnel must hand the
worker's RPC server exactly llama.cpp's bytes (HELLO's conn_caps zeroed), and references
must replace exactly the pieces of uploads that equal the file.
"""

from __future__ import annotations

import hashlib
import itertools
import random
import struct
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshp2p._errors import ModelError, ProtocolError
from meshp2p.inference._gguf import GgufLayout, TensorInfo, read_layout
from meshp2p.tensor._protocol import (
    EXT_GGUF_REF,
    MAX_FILES,
    MAX_FRAME,
    HostHello,
    HostRewriter,
    Refused,
    ResponseFilter,
    WorkerHello,
    WorkerRewriter,
    answer_hello,
    parse_host_hello,
    parse_worker_reply,
)
from meshp2p.tensor._rpc_wire import (
    COMMAND_HEADER_SIZE,
    CONN_CAPS_SIZE,
    MAX_RAW_SEGMENT,
    REF_SEGMENT_SIZE,
    SET_TENSOR_GGUF,
    SET_TENSOR_HEADER_SIZE,
    FileRegion,
    RpcCommand,
    RpcRequestParser,
    RpcTensor,
    TensorData,
    TensorUpload,
    TensorUploadEnd,
    encode_command,
    encode_gguf_header,
    encode_raw_segment,
    encode_ref_segment,
    encode_set_tensor,
)
from meshp2p.transport._wire import FrameDecoder, encode_frame

# -- a synthetic model file ----------------------------------------------------------------

FILE = random.Random(20_240_601).randbytes(8192)
SHA = hashlib.sha256(FILE).digest()
SHA_HEX = SHA.hex()
OTHER_SHA = hashlib.sha256(b"another file").digest()
TENSORS = (
    TensorInfo("token_embd.weight", 8, (32, 32), 512, 1088),
    TensorInfo("blk.0.attn_q.weight", 0, (512,), 1600, 2048),
    TensorInfo("blk.0.ffn_up.weight", 12, (768,), 3648, 3000),
    TensorInfo("blk.1.attn_norm.weight", 0, (4,), 6656, 16),
    TensorInfo("output_norm.weight", 0, (32,), 6688, 128),
)
LAYOUT = GgufLayout(Path("synthetic.gguf"), "test", 2, len(FILE), TENSORS)
INDEXED = list(TENSORS)
FILES = {SHA: len(FILE)}

NODE = "12D3KooWWorkerNodeExample"
CAPS = bytes(range(1, CONN_CAPS_SIZE + 1))
HELLO = encode_command(RpcCommand.HELLO, bytes(CONN_CAPS_SIZE))


class FileReads:
    """``read(sha256, offset, length)`` over FILE, recording every call."""

    def __init__(self) -> None:
        self.calls: list[tuple[bytes, int, int]] = []

    def __call__(self, sha256: bytes, offset: int, length: int) -> bytes:
        self.calls.append((sha256, offset, length))
        assert sha256 == SHA, "read of a file nobody offered"
        assert offset >= 0 and offset + length <= len(FILE), "read outside the file"
        return FILE[offset : offset + length]


def tensor(name: str = "blk.0.attn_q.weight") -> RpcTensor:
    return RpcTensor(
        id=0x5555_0000_0001,
        type=0,
        buffer=0x5555_0000_2000,
        ne=(512, 1, 1, 1),
        nb=(4, 2048, 2048, 2048),
        data=0x7F00_0000_1000,
        name=name,
    )


def file_bytes(info: TensorInfo, offset: int = 0, length: int | None = None) -> bytes:
    length = info.n_bytes - offset if length is None else length
    return FILE[info.offset + offset : info.offset + offset + length]


def joined(chunks: list[bytes | memoryview]) -> bytes:
    return b"".join(bytes(c) for c in chunks)


def pieces(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in itertools.pairwise([0, *points, len(data)])]


def host(read: FileReads | None = None) -> HostRewriter:
    return HostRewriter({SHA_HEX: LAYOUT}, read or FileReads())


def worker(read: FileReads | None = None) -> WorkerRewriter:
    return WorkerRewriter(FILES, read or FileReads())


def through_host(wire: bytes, cuts: list[int] | None = None) -> bytes:
    rewriter = host()
    out: list[bytes | memoryview] = []
    for piece in pieces(wire, cuts or []):
        out += rewriter.feed(piece)
    rewriter.end_of_stream()
    return joined(out)


def segments(stream: bytes) -> list[tuple[Any, ...]]:
    """The SET_TENSOR_GGUF segments of a host's stream fed whole, in order:
    ("raw", bytes) or ("ref", file_offset, length)."""
    out: list[tuple[Any, ...]] = []
    for event in RpcRequestParser(gguf_files=FILES).feed(stream):
        if isinstance(event, TensorData):
            out.append(("raw", bytes(event.data)))
        elif isinstance(event, FileRegion):
            assert event.sha256 == SHA
            out.append(("ref", event.offset, event.length))
    return out


# -- hellos --------------------------------------------------------------------------------


def frame_round_trip(msg: dict[str, Any]) -> dict[str, Any]:
    frame = encode_frame(msg)
    (decoded,) = FrameDecoder(MAX_FRAME).feed(frame)
    return decoded


def test_host_hello_round_trips_and_omits_empty_optional_keys() -> None:
    plain = HostHello(worker=NODE)
    assert plain.to_map() == {"t": "hello", "v": 1, "worker": NODE, "rpc": [7, 0, 0]}
    full = HostHello(NODE, (7, 0, 0), (SHA_HEX,), (EXT_GGUF_REF,), 3 * 2**30)
    assert full.to_map()["memory"] == 3 * 2**30 and full.to_map()["files"] == [SHA_HEX]
    for hello in (plain, full):
        assert parse_host_hello(frame_round_trip(hello.to_map())) == hello


def test_worker_hello_and_refused_round_trip() -> None:
    hello = WorkerHello(files=(SHA_HEX,), ext=(EXT_GGUF_REF,))
    assert parse_worker_reply(frame_round_trip(hello.to_map())) == hello
    assert WorkerHello().to_map() == {"t": "hello", "v": 1, "rpc": [7, 0, 0]}
    refused = Refused("busy", "")
    assert parse_worker_reply(frame_round_trip(refused.to_map())) == refused


def test_unknown_keys_are_ignored() -> None:
    msg = {**HostHello(NODE, memory=5).to_map(), "future": {"x": [1]}}
    assert parse_host_hello(msg) == HostHello(NODE, memory=5)
    reply = {**WorkerHello().to_map(), "gpu": "none"}
    assert parse_worker_reply(reply) == WorkerHello()


def test_answer_refuses_a_hello_meant_for_another_node() -> None:
    answer = answer_hello(HostHello("12D3KooWSomeoneElse"), node_id=NODE, files=[SHA_HEX])
    assert isinstance(answer, Refused) and answer.code == "not_worker"
    assert NODE in answer.message and "12D3KooWSomeoneElse" in answer.message


@pytest.mark.parametrize("rpc", [(7, 0, 1), (7, 1, 0), (6, 0, 0), (8, 0, 0)])
def test_answer_refuses_any_other_rpc_version(rpc: tuple[int, int, int]) -> None:
    answer = answer_hello(HostHello(NODE, rpc=rpc), node_id=NODE, files=[SHA_HEX])
    assert isinstance(answer, Refused) and answer.code == "version"
    assert "7.0.0" in answer.message and ".".join(map(str, rpc)) in answer.message


def test_answer_refuses_when_the_node_lends_nothing() -> None:
    answer = answer_hello(HostHello(NODE), node_id=NODE, files=[], available=False)
    assert isinstance(answer, Refused) and answer.code == "unavailable"


def test_answer_checks_the_node_id_before_the_version() -> None:
    answer = answer_hello(HostHello("other", rpc=(8, 0, 0)), node_id=NODE, files=[])
    assert isinstance(answer, Refused) and answer.code == "not_worker"


def test_answer_lists_the_hosts_files_this_worker_holds_in_the_hosts_order() -> None:
    a, b, c = (hashlib.sha256(bytes([i])).hexdigest() for i in range(3))
    hello = HostHello(NODE, files=(c, a, b), ext=(EXT_GGUF_REF,))
    answer = answer_hello(hello, node_id=NODE, files=[a, c, SHA_HEX])
    assert answer == WorkerHello((7, 0, 0), (c, a), (EXT_GGUF_REF,))


def test_answer_accepts_gguf_ref_only_with_files_and_only_if_offered() -> None:
    offered = HostHello(NODE, files=(SHA_HEX,), ext=("future-ext", EXT_GGUF_REF))
    assert answer_hello(offered, node_id=NODE, files=[SHA_HEX]) == WorkerHello(
        files=(SHA_HEX,), ext=(EXT_GGUF_REF,)
    )
    # The worker holds none of the host's files: no files, so no gguf-ref either.
    assert answer_hello(offered, node_id=NODE, files=[OTHER_SHA.hex()]) == WorkerHello()
    # Files in common, but the host did not offer the extension.
    not_offered = HostHello(NODE, files=(SHA_HEX,))
    assert answer_hello(not_offered, node_id=NODE, files=[SHA_HEX]) == WorkerHello(files=(SHA_HEX,))
    # The host offers the extension but names no files.
    assert answer_hello(HostHello(NODE, ext=(EXT_GGUF_REF,)), node_id=NODE, files=[SHA_HEX]) == (
        WorkerHello()
    )


def host_map(**change: Any) -> dict[str, Any]:
    msg = HostHello(NODE, files=(SHA_HEX,), ext=(EXT_GGUF_REF,), memory=1).to_map()
    for key, value in change.items():
        if value is ...:
            del msg[key]
        else:
            msg[key] = value
    return msg


@pytest.mark.parametrize(
    "change",
    [
        {"t": "hola"},
        {"t": ...},
        {"v": 2},
        {"v": 0},
        {"v": ...},
        {"v": "1"},
        {"worker": ...},
        {"worker": ""},
        {"worker": "x" * 129},
        {"worker": b"node"},
        {"rpc": ...},
        {"rpc": [7, 0]},
        {"rpc": [7, 0, 0, 0]},
        {"rpc": [7, 0, 256]},
        {"rpc": [7, 0, -1]},
        {"rpc": [7, "0", 0]},
        {"rpc": "7.0.0"},
        {"files": SHA_HEX},
        {"files": [SHA_HEX.upper()]},
        {"files": [SHA_HEX[:-1]]},
        {"files": [SHA]},
        {"files": [SHA_HEX] * (MAX_FILES + 1)},
        {"ext": EXT_GGUF_REF},
        {"ext": [""]},
        {"ext": ["x" * 65]},
        {"ext": [1]},
        {"ext": ["e"] * 17},
        {"memory": -1},
        {"memory": "1"},
        {"memory": True},
        {"memory": 1.5},
    ],
    ids=repr,
)
def test_malformed_host_hello_is_a_protocol_error(change: dict[str, Any]) -> None:
    msg = host_map(**change)
    with pytest.raises(ProtocolError):
        parse_host_hello(msg)


def test_host_hello_limits_themselves_are_accepted() -> None:
    msg = host_map(
        worker="x" * 128, files=[SHA_HEX] * MAX_FILES, ext=["e" * 64] * 16, rpc=[0, 255, 0]
    )
    hello = parse_host_hello(msg)
    assert len(hello.files) == MAX_FILES and hello.rpc == (0, 255, 0)


@pytest.mark.parametrize("rpc", [[7, False, False], [True, 0, 0]])
def test_rpc_triple_of_booleans_is_a_protocol_error(rpc: list[Any]) -> None:
    with pytest.raises(ProtocolError):
        parse_host_hello(host_map(rpc=rpc))


def test_a_hello_with_the_most_files_allowed_fits_in_a_frame() -> None:
    hello = HostHello(
        NODE, files=tuple(hashlib.sha256(bytes([i])).hexdigest() for i in range(MAX_FILES))
    )
    assert frame_round_trip(hello.to_map()) == hello.to_map()


@pytest.mark.parametrize(
    "msg",
    [
        {"t": "hola"},
        {},
        {"t": "hello", "v": 2, "rpc": [7, 0, 0]},
        {"t": "hello", "rpc": [7, 0, 0]},
        {"t": "hello", "v": 1},
        {"t": "hello", "v": 1, "rpc": [7, 0, 0], "files": ["nope"]},
        {"t": "hello", "v": 1, "rpc": [7, 0, 0], "ext": [""]},
        {"t": "refused", "message": "m"},
        {"t": "refused", "code": "", "message": "m"},
        {"t": "refused", "code": "c" * 65, "message": "m"},
        {"t": "refused", "code": "busy"},
        {"t": "refused", "code": "busy", "message": "m" * 1025},
        {"t": "refused", "code": 3, "message": "m"},
    ],
    ids=repr,
)
def test_malformed_worker_reply_is_a_protocol_error(msg: dict[str, Any]) -> None:
    with pytest.raises(ProtocolError):
        parse_worker_reply(msg)


def test_a_refusal_needs_no_version_and_keeps_unknown_codes() -> None:
    assert parse_worker_reply({"t": "refused", "code": "later", "message": "m" * 1024}) == (
        Refused("later", "m" * 1024)
    )


# -- the gguf-ref parser extension ---------------------------------------------------------

Q = TENSORS[1]


def gguf_command(
    data_length: int, body: bytes, t: RpcTensor | None = None, offset: int = 0
) -> bytes:
    """A SET_TENSOR_GGUF for ``data_length`` bytes with the given segment bytes."""
    upload = RpcRequestParser().feed(
        HELLO + encode_set_tensor(t or tensor(), offset, bytes(data_length))
    )[1]
    assert isinstance(upload, TensorUpload)
    return encode_gguf_header(upload) + body


def test_gguf_command_gives_upload_then_data_and_regions_then_end() -> None:
    raw = b"\x01\x02\x03"
    wire = gguf_command(
        3 + 100, encode_raw_segment(raw) + encode_ref_segment(SHA, Q.offset, 100), offset=8
    )
    assert wire[0] == SET_TENSOR_GGUF == 0x80
    assert int.from_bytes(wire[1:9], "little") == SET_TENSOR_HEADER_SIZE + 103
    parser = RpcRequestParser(gguf_files=FILES)
    events = parser.feed(HELLO + wire + encode_command(RpcCommand.DEVICE_COUNT))
    upload = events[1]
    assert isinstance(upload, TensorUpload)
    assert (upload.command, upload.offset, upload.data_length) == (RpcCommand.SET_TENSOR, 8, 103)
    assert isinstance(events[2], TensorData) and events[2].data == raw
    assert events[3:5] == [FileRegion(SHA, Q.offset, 100), TensorUploadEnd()]
    assert len(events) == 6 and parser.at_boundary


def test_empty_gguf_upload_has_no_segments() -> None:
    parser = RpcRequestParser(gguf_files=FILES)
    events = parser.feed(HELLO + gguf_command(0, b""))
    assert isinstance(events[1], TensorUpload) and events[1].data_length == 0
    assert events[2:] == [TensorUploadEnd()] and parser.at_boundary


def test_segment_layouts() -> None:
    assert encode_raw_segment(b"ab") == b"\x00\x02\x00\x00\x00ab"
    ref = encode_ref_segment(SHA, 0x0102, 0x0304)
    assert len(ref) == REF_SEGMENT_SIZE == 49
    assert ref == b"\x01" + SHA + (0x0102).to_bytes(8, "little") + (0x0304).to_bytes(8, "little")
    for bad in (b"", bytes(MAX_RAW_SEGMENT + 1)):
        with pytest.raises(ValueError):
            encode_raw_segment(bad)
    with pytest.raises(ValueError):
        encode_ref_segment(SHA, 0, 0)
    with pytest.raises(ValueError):
        encode_ref_segment(SHA[:31], 0, 1)


def refuse(wire: bytes, match: str, files: dict[bytes, int] | None = FILES) -> FileReads:
    """Feed HELLO + ``wire`` to a worker tunnel; it must raise; returns its reads."""
    reads = FileReads()
    rewriter = WorkerRewriter(files or {}, reads)
    with pytest.raises(ProtocolError, match=match):
        rewriter.feed(HELLO)
        rewriter.feed(wire)
    with pytest.raises(ProtocolError):  # and stays failed
        rewriter.feed(encode_command(RpcCommand.DEVICE_COUNT))
    return reads


def test_worker_refuses_a_ref_to_a_file_it_did_not_offer() -> None:
    reads = refuse(gguf_command(10, encode_ref_segment(OTHER_SHA, 0, 10)), "did not offer")
    assert reads.calls == []


def test_worker_refuses_a_ref_past_the_end_of_the_file() -> None:
    refuse(gguf_command(10, encode_ref_segment(SHA, len(FILE) - 9, 10)), "outside the file")
    refuse(gguf_command(10, encode_ref_segment(SHA, 2**64 - 1, 10)), "outside the file")
    # The last byte of the file is fine.
    out = worker().feed(HELLO + gguf_command(10, encode_ref_segment(SHA, len(FILE) - 10, 10)))
    assert joined(out).endswith(FILE[-10:])


def test_worker_refuses_segments_that_overrun_the_upload() -> None:
    refuse(gguf_command(10, encode_ref_segment(SHA, 0, 11)), "still needs")
    refuse(gguf_command(10, encode_raw_segment(bytes(11))), "still needs")
    refuse(
        gguf_command(10, encode_raw_segment(bytes(6)) + encode_ref_segment(SHA, 0, 5)),
        "still needs",
    )


def test_worker_refuses_empty_segments() -> None:
    refuse(gguf_command(10, b"\x00" + bytes(4)), "RAW segment of 0 bytes")
    ref0 = b"\x01" + SHA + bytes(16)
    refuse(gguf_command(10, ref0), "REF of 0 bytes")


def test_worker_refuses_a_raw_segment_over_1_mib() -> None:
    head = b"\x00" + (MAX_RAW_SEGMENT + 1).to_bytes(4, "little")
    refuse(gguf_command(2 * MAX_RAW_SEGMENT, head), f"1..{MAX_RAW_SEGMENT}")
    # Exactly 1 MiB is allowed.
    rewriter = worker()
    rewriter.feed(HELLO + gguf_command(MAX_RAW_SEGMENT, encode_raw_segment(bytes(MAX_RAW_SEGMENT))))
    rewriter.end_of_stream()


@pytest.mark.parametrize("kind", [0x02, 0x06, 0x80, 0xFF])
def test_worker_refuses_an_unknown_segment_kind(kind: int) -> None:
    refuse(gguf_command(10, bytes((kind,)) + bytes(48)), f"segment kind {kind}")


def test_segments_falling_short_of_the_upload_are_an_error() -> None:
    short = gguf_command(10, encode_raw_segment(bytes(5)))
    # The next command's id is read as a segment kind.
    refuse(short + encode_command(RpcCommand.DEVICE_COUNT), "segment kind 15")
    rewriter = worker()
    rewriter.feed(HELLO + short)
    with pytest.raises(ProtocolError, match="inside a command"):
        rewriter.end_of_stream()


def test_gguf_command_without_the_extension_is_an_unknown_command() -> None:
    wire = gguf_command(10, encode_ref_segment(SHA, 0, 10))
    refuse(wire, "command 128", files=None)
    with pytest.raises(ProtocolError, match="command 128"):
        RpcRequestParser().feed(HELLO + wire)


def test_worker_passes_plain_commands_unchanged() -> None:
    wire = (
        HELLO
        + encode_set_tensor(tensor(), 4, b"abc")
        + encode_command(RpcCommand.GET_ALIGNMENT, b"\x00" * 4)
        + encode_command(RpcCommand.GRAPH_COMPUTE, bytes(12))
    )
    rewriter = worker()
    assert joined(rewriter.feed(wire)) == wire
    assert rewriter.counters.uploads == 1 and rewriter.counters.bytes_by_reference == 0


# -- conn_caps -----------------------------------------------------------------------------


def test_both_tunnels_zero_the_hello_request_conn_caps() -> None:
    llama = encode_command(RpcCommand.HELLO, CAPS) + encode_command(RpcCommand.DEVICE_COUNT)
    expected = HELLO + encode_command(RpcCommand.DEVICE_COUNT)
    assert through_host(llama) == expected
    assert joined(worker().feed(llama)) == expected


HELLO_ANSWER = (28).to_bytes(8, "little") + bytes((7, 0, 0, 0))


def response(payload: bytes) -> bytes:
    return len(payload).to_bytes(8, "little") + payload


@settings(max_examples=200, deadline=None)
@given(
    st.binary(min_size=CONN_CAPS_SIZE, max_size=CONN_CAPS_SIZE),
    st.lists(st.binary(max_size=200), max_size=4),
    st.lists(st.integers(0, 400), max_size=8),
)
def test_response_filter_zeroes_only_the_hello_answers_conn_caps(
    caps: bytes, payloads: list[bytes], cuts: list[int]
) -> None:
    # What follows may even look like another HELLO answer: it passes as it is.
    rest = b"".join(response(p) for p in payloads)
    answers = HELLO_ANSWER + caps + rest + HELLO_ANSWER + caps
    response_filter = ResponseFilter()
    out = b"".join(bytes(c) for piece in pieces(answers, cuts) for c in response_filter.feed(piece))
    assert out == HELLO_ANSWER + bytes(CONN_CAPS_SIZE) + rest + HELLO_ANSWER + caps
    assert response_filter.pending == 0


def test_response_filter_forwards_whole_responses_only() -> None:
    f = ResponseFilter()
    assert f.feed(HELLO_ANSWER + bytes(CONN_CAPS_SIZE)) == [HELLO_ANSWER + bytes(CONN_CAPS_SIZE)]
    # The server writes a size, then its payload: one response comes out, once.
    assert f.feed((4).to_bytes(8, "little")) == []
    assert f.pending == 8
    assert f.feed(b"ab") == []
    assert f.feed(b"cd" + response(b"")) == [response(b"abcd"), response(b"")]


def test_response_filter_passes_a_large_response_in_bounded_pieces() -> None:
    f = ResponseFilter()
    f.feed(HELLO_ANSWER + bytes(CONN_CAPS_SIZE))
    big = response(bytes(range(256)) * 4096)  # 1 MiB
    out = [f.feed(big[i : i + 100_000]) for i in range(0, len(big), 100_000)]
    assert b"".join(b"".join(o) for o in out) == big
    assert all(len(piece) <= 256 * 1024 + 100_000 for o in out for piece in o)
    assert sum(len(o) for o in out) > 1  # not held back until the end
    assert f.pending == 0


# -- host tunnel then worker tunnel --------------------------------------------------------

# A command llama.cpp might send, with what the host tunnel should do with it:
# ("plain",) passes unchanged; ("ref", info, offset, data) is an upload of an indexed tensor.
Command = tuple[bytes, tuple[Any, ...]]


@st.composite
def uploads_of_the_file(draw: st.DrawFn) -> Command:
    info = draw(st.sampled_from(INDEXED))
    offset = draw(st.integers(0, info.n_bytes - 1))
    length = draw(st.integers(1, info.n_bytes - offset))
    changed = bytearray(file_bytes(info, offset, length))
    if draw(st.booleans()):  # differ somewhere, maybe in the middle only
        for at in draw(st.lists(st.integers(0, length - 1), min_size=1, max_size=4)):
            changed[at] ^= draw(st.integers(1, 255))
    data = bytes(changed)
    flag = draw(st.sampled_from([0, 1]))
    wire = encode_set_tensor(tensor(info.name), offset, data, cache_flag=flag)
    return wire, ("ref", info, offset, data)


@st.composite
def other_commands(draw: st.DrawFn) -> Command:
    kind = draw(st.sampled_from(["foreign", "beyond", "empty", "fixed", "graph"]))
    if kind == "foreign":  # a graph input or activation: not in the index
        name = draw(st.sampled_from(["inp_embd", "RPC0[127.0.0.1:4]#inp_pos#0", "blk.9.x", ""]))
        wire = encode_set_tensor(
            tensor(name), draw(st.integers(0, 99)), draw(st.binary(max_size=300))
        )
    elif kind == "beyond":  # an indexed name, but the region runs past the tensor
        info = draw(st.sampled_from(INDEXED))
        offset = draw(st.integers(1, info.n_bytes))
        data = FILE[info.offset + offset : info.offset + info.n_bytes + 1]
        wire = encode_set_tensor(tensor(info.name), offset, data)
    elif kind == "empty":
        wire = encode_set_tensor(tensor(draw(st.sampled_from(INDEXED)).name), 0, b"")
    elif kind == "fixed":
        command = draw(
            st.sampled_from(
                [RpcCommand.DEVICE_COUNT, RpcCommand.GET_ALIGNMENT, RpcCommand.FREE_BUFFER]
            )
        )
        size = {RpcCommand.DEVICE_COUNT: 0, RpcCommand.GET_ALIGNMENT: 4}.get(command, 8)
        wire = encode_command(command, draw(st.binary(min_size=size, max_size=size)))
    else:
        wire = encode_command(RpcCommand.GRAPH_COMPUTE, draw(st.binary(min_size=12, max_size=400)))
    return wire, ("plain",)


@st.composite
def llama_streams(draw: st.DrawFn) -> tuple[bytes, list[Command]]:
    caps = draw(st.binary(min_size=CONN_CAPS_SIZE, max_size=CONN_CAPS_SIZE))
    commands = draw(st.lists(st.one_of(uploads_of_the_file(), other_commands()), max_size=8))
    return encode_command(RpcCommand.HELLO, caps) + b"".join(w for w, _ in commands), commands


@settings(max_examples=200, deadline=None)
@given(
    llama_streams(),
    st.lists(st.integers(0, 2**16), max_size=20),
    st.lists(st.integers(0, 2**16), max_size=20),
)
def test_host_then_worker_reproduces_llamas_bytes_for_any_chunking(
    stream: tuple[bytes, list[Command]], host_cuts: list[int], worker_cuts: list[int]
) -> None:
    llama, commands = stream
    expected = HELLO + llama[len(HELLO) :]  # conn_caps zeroed, nothing else changed
    host_reads, worker_reads = FileReads(), FileReads()
    host_side, worker_side = host(host_reads), worker(worker_reads)
    on_stream = bytearray()
    for piece in pieces(llama, host_cuts):
        on_stream += joined(host_side.feed(piece))
    host_side.end_of_stream()
    out = bytearray()
    for piece in pieces(bytes(on_stream), worker_cuts):
        out += joined(worker_side.feed(piece))
    worker_side.end_of_stream()
    assert out == expected

    by_reference = [c for _, c in commands if c[0] == "ref"]
    assert host_side.counters.uploads == sum(
        1 for w, _ in commands if w[0] == RpcCommand.SET_TENSOR
    )
    assert host_side.counters.uploads_by_reference == len(by_reference)
    assert worker_side.counters.bytes_by_reference == host_side.counters.bytes_by_reference
    assert host_side.counters.bytes_in == len(llama)
    assert host_side.counters.bytes_out == len(on_stream)
    if all(data == file_bytes(i, o, len(data)) for _, i, o, data in by_reference):
        # Every indexed upload equals the file: each crosses as its header and one REF.
        plain = sum(len(w) for w, c in commands if c[0] == "plain")
        assert len(on_stream) == len(HELLO) + plain + len(by_reference) * (
            COMMAND_HEADER_SIZE + SET_TENSOR_HEADER_SIZE + REF_SEGMENT_SIZE
        )
        assert host_side.counters.bytes_by_reference == sum(len(c[3]) for c in by_reference)
    for sha, _, length in worker_reads.calls:
        assert sha == SHA and length > 0


def expected_segments(
    info: TensorInfo, offset: int, data: bytes, data_start: int, cuts: list[int], total: int
) -> list[tuple[Any, ...]]:
    """What the host tunnel must send for an upload, given where llama.cpp's reads cut it:
    each read's piece of the data that equals the file extends a REF, any other is RAW."""
    bounds = sorted({0, total, *(c % (total + 1) for c in cuts)})
    out: list[tuple[Any, ...]] = []
    ref: list[int] | None = None
    for a, b in itertools.pairwise(bounds):
        lo, hi = max(a, data_start) - data_start, min(b, data_start + len(data)) - data_start
        if lo >= hi:
            continue
        at = info.offset + offset + lo
        if data[lo:hi] == FILE[at : at + hi - lo]:
            if ref is None:
                ref = [at, 0]
            ref[1] += hi - lo
        else:
            if ref is not None:
                out.append(("ref", *ref))
                ref = None
            out.append(("raw", data[lo:hi]))
    if ref is not None:
        out.append(("ref", *ref))
    return out


@settings(max_examples=300, deadline=None)
@given(uploads_of_the_file(), st.lists(st.integers(0, 2**13), max_size=12))
def test_references_replace_exactly_the_pieces_equal_to_the_file(
    upload: Command, cuts: list[int]
) -> None:
    wire, (_, info, offset, data) = upload
    llama = HELLO + wire
    stream = through_host(llama, cuts)
    data_start = len(HELLO) + COMMAND_HEADER_SIZE + SET_TENSOR_HEADER_SIZE
    expected = expected_segments(info, offset, data, data_start, cuts, len(llama))
    assert segments(stream) == expected
    assert (
        stream[:data_start] == HELLO + bytes((SET_TENSOR_GGUF,)) + wire[1 : data_start - len(HELLO)]
    )
    raw = sum(len(s[1]) for s in expected if s[0] == "raw")
    assert len(stream) == data_start + sum(
        REF_SEGMENT_SIZE if s[0] == "ref" else 5 + len(s[1]) for s in expected
    )
    assert raw <= len(data)


def test_an_upload_equal_to_the_file_is_one_ref_however_it_is_read() -> None:
    info = TENSORS[2]
    llama = HELLO + encode_set_tensor(tensor(info.name), 0, file_bytes(info))
    for cuts in ([], list(range(0, len(llama), 7)), [len(HELLO) + 100, len(llama) - 1]):
        stream = through_host(llama, cuts)
        assert segments(stream) == [("ref", info.offset, info.n_bytes)]
        assert len(stream) == len(HELLO) + COMMAND_HEADER_SIZE + SET_TENSOR_HEADER_SIZE + 49


def test_a_difference_in_the_middle_sends_only_the_piece_that_differs() -> None:
    info = TENSORS[1]
    data = bytearray(file_bytes(info))
    data[1000] ^= 0xFF
    llama = HELLO + encode_set_tensor(tensor(info.name), 0, bytes(data))
    start = len(HELLO) + COMMAND_HEADER_SIZE + SET_TENSOR_HEADER_SIZE
    rewriter = host()
    out = joined(rewriter.feed(llama[:start]))
    for at in range(start, len(llama), 256):  # llama.cpp's bytes read 256 at a time
        out += joined(rewriter.feed(llama[at : at + 256]))
    assert segments(out) == [
        ("ref", info.offset, 768),
        ("raw", bytes(data[768:1024])),
        ("ref", info.offset + 1024, 1024),
    ]
    assert rewriter.counters.bytes_by_reference == 2048 - 256


def test_uploads_not_in_the_index_pass_unchanged() -> None:
    for wire in (
        encode_set_tensor(tensor("inp_embd"), 0, file_bytes(TENSORS[1])),
        # Indexed name, but the upload runs past the tensor's end.
        encode_set_tensor(tensor(TENSORS[3].name), 8, FILE[TENSORS[3].offset + 8 :][:9]),
        # Zero-length upload of an indexed tensor.
        encode_set_tensor(tensor(TENSORS[1].name), 0, b""),
    ):
        rewriter = host()
        assert joined(rewriter.feed(HELLO + wire)) == HELLO + wire
        assert rewriter.counters.uploads == 1
        assert rewriter.counters.uploads_by_reference == 0


def test_host_without_layouts_only_zeroes_conn_caps() -> None:
    llama = encode_command(RpcCommand.HELLO, CAPS) + encode_set_tensor(
        tensor(TENSORS[1].name), 0, file_bytes(TENSORS[1])
    )
    rewriter = HostRewriter({}, FileReads())
    assert joined(rewriter.feed(llama)) == HELLO + llama[len(HELLO) :]


def test_host_refuses_what_llama_cpp_would_never_send() -> None:
    rewriter = host()
    with pytest.raises(ProtocolError):
        rewriter.feed(HELLO + gguf_command(10, encode_ref_segment(SHA, 0, 10)))


# -- the real default model ----------------------------------------------------------------


@pytest.fixture
def default_model(request: pytest.FixtureRequest) -> Path:
    try:
        path: Path = request.getfixturevalue("model_path")
    except ModelError as exc:
        pytest.skip(f"no default model: {exc}")
    if not path.is_file():
        pytest.skip(f"no default model at {path}")
    return path


def test_read_layout_of_the_default_model(default_model: Path) -> None:
    layout = read_layout(default_model)
    assert layout.architecture == "gemma3" and layout.n_layers == 18
    assert layout.file_size == default_model.stat().st_size
    tensors = sorted(layout.tensors, key=lambda t: t.offset)
    assert len({t.name for t in tensors}) == len(tensors) > 18
    for t in tensors:
        assert t.offset % 32 == 0 and t.n_bytes > 0
        assert t.offset > 0 and t.offset + t.n_bytes <= layout.file_size
    for a, b in itertools.pairwise(tensors):
        # Back to back, no overlap, at most the alignment's padding in between.
        assert 0 <= b.offset - (a.offset + a.n_bytes) < 32, (a.name, b.name)
    assert tensors[-1].offset + tensors[-1].n_bytes == layout.file_size
    by_name = layout.by_name
    norm = by_name["output_norm.weight"]
    assert (norm.ggml_type, norm.shape, norm.n_bytes) == (0, (640,), 640 * 4)  # F32
    embd = by_name["token_embd.weight"]
    assert embd.shape == (640, 262144)
    host_only = [
        by_name[n]
        for n in ("token_embd.weight", "output_norm.weight", "output.weight")
        if n in by_name
    ]
    assert layout.host_only_bytes == sum(t.n_bytes for t in host_only) == 178_260_480
    assert {t.name.split(".")[1] for t in tensors if t.name.startswith("blk.")} == {
        str(i) for i in range(18)
    }


def test_the_default_models_norm_weights_are_read_where_the_layout_says(
    default_model: Path,
) -> None:
    """An F32 norm read at its offset holds finite weights of a plausible size."""
    norm = read_layout(default_model).by_name["output_norm.weight"]
    with default_model.open("rb") as f:
        f.seek(norm.offset)
        raw = f.read(norm.n_bytes)
    values = struct.unpack(f"<{norm.n_bytes // 4}f", raw)
    assert all(abs(v) < 1000 for v in values)
    assert sum(abs(v) for v in values) > 0
