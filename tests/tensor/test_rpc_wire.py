"""The llama.cpp RPC request parser: layouts from ggml-rpc.cpp, any split, hostile input."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshp2p._errors import ProtocolError
from meshp2p.tensor._rpc_wire import (
    COMMAND_HEADER_SIZE,
    CONN_CAPS_SIZE,
    REQUEST_SIZES,
    RPC_TENSOR_SIZE,
    SET_TENSOR_HEADER_SIZE,
    Hello,
    Request,
    RpcCommand,
    RpcEvent,
    RpcRequestParser,
    RpcTensor,
    TensorData,
    TensorUpload,
    TensorUploadEnd,
    encode_command,
    encode_set_tensor,
)

HELLO = encode_command(RpcCommand.HELLO, bytes(CONN_CAPS_SIZE))

U64 = st.integers(0, 2**64 - 1)
U32 = st.integers(0, 2**32 - 1)
I32 = st.integers(-(2**31), 2**31 - 1)


def tensor(name: str = "blk.0.attn_q.weight", data: int = 0x7F00_0000_1000) -> RpcTensor:
    return RpcTensor(
        id=0x5555_0000_0001,
        type=12,
        buffer=0x5555_0000_2000,
        ne=(4096, 4096, 1, 1),
        nb=(144, 2304, 9437184, 9437184),
        data=data,
        name=name,
    )


@st.composite
def tensors(draw: st.DrawFn) -> RpcTensor:
    name = draw(
        st.text(st.characters(blacklist_characters="\0", codec="utf-8"), max_size=20).filter(
            lambda s: len(s.encode()) < 64
        )
    )
    return RpcTensor(
        id=draw(U64),
        type=draw(U32),
        buffer=draw(U64),
        ne=(draw(U32), draw(U32), draw(U32), draw(U32)),
        nb=(draw(U32), draw(U32), draw(U32), draw(U32)),
        op=draw(U32),
        op_params=tuple(draw(st.lists(I32, min_size=16, max_size=16))),
        flags=draw(I32),
        src=tuple(draw(st.lists(U64, min_size=10, max_size=10))),
        view_src=draw(U64),
        view_offs=draw(U64),
        data=draw(U64),
        name=name,
        use_count=draw(I32),
    )


FIXED = sorted(c for c in REQUEST_SIZES if c is not RpcCommand.HELLO)

# A command as the tests expect to see it again: ("request", command, payload) or
# ("upload", tensor, cache_flag, offset, data).
Expected = tuple[Any, ...]


@st.composite
def commands(draw: st.DrawFn) -> tuple[bytes, Expected]:
    kind = draw(st.sampled_from(["fixed", "graph", "upload"]))
    if kind == "fixed":
        command = draw(st.sampled_from(FIXED))
        payload = draw(st.binary(min_size=REQUEST_SIZES[command], max_size=REQUEST_SIZES[command]))
        return encode_command(command, payload), ("request", command, payload)
    if kind == "graph":
        payload = draw(st.binary(min_size=12, max_size=2000))
        return encode_command(RpcCommand.GRAPH_COMPUTE, payload), (
            "request",
            RpcCommand.GRAPH_COMPUTE,
            payload,
        )
    t, offset, flag = draw(tensors()), draw(U64), draw(st.sampled_from([0, 1]))
    data = draw(st.binary(max_size=3000))
    return encode_set_tensor(t, offset, data, cache_flag=flag), ("upload", t, flag, offset, data)


@st.composite
def streams(draw: st.DrawFn) -> tuple[bytes, list[Expected]]:
    caps = draw(st.binary(min_size=CONN_CAPS_SIZE, max_size=CONN_CAPS_SIZE))
    parts = draw(st.lists(commands(), max_size=12))
    stream = encode_command(RpcCommand.HELLO, caps) + b"".join(wire for wire, _ in parts)
    return stream, [("hello", caps), *(expected for _, expected in parts)]


def pieces(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


def collect(events: list[RpcEvent]) -> list[Expected]:
    """Events folded back into whole commands, checking their order on the way."""
    out: list[Expected] = []
    upload: TensorUpload | None = None
    data = bytearray()
    for event in events:
        if isinstance(event, TensorData):
            assert upload is not None
            data += event.data
        elif isinstance(event, TensorUploadEnd):
            assert upload is not None and len(data) == upload.data_length
            out.append(("upload", upload.tensor, upload.cache_flag, upload.offset, bytes(data)))
            upload, data = None, bytearray()
        else:
            assert upload is None
            if isinstance(event, Hello):
                out.append(("hello", event.conn_caps))
            elif isinstance(event, Request):
                out.append(("request", event.command, event.payload))
            else:
                upload = event
    assert upload is None
    return out


def feed_all(parser: RpcRequestParser, chunks: list[bytes]) -> list[RpcEvent]:
    events: list[RpcEvent] = []
    for chunk in chunks:
        events += parser.feed(chunk)
        assert parser.buffered <= parser.max_buffered
    return events


# The layout, checked against the packed C structs of ggml-rpc.cpp.


def test_rpc_tensor_fields_sit_at_the_c_struct_offsets() -> None:
    t = RpcTensor(
        id=0x0101010101010101,
        type=0x02020202,
        buffer=0x0303030303030303,
        ne=(4, 4, 4, 4),
        nb=(5, 5, 5, 5),
        op=6,
        op_params=(7,) * 16,
        flags=8,
        src=(9,) * 10,
        view_src=10,
        view_offs=11,
        data=12,
        name="n",
        use_count=13,
    )
    raw = t.encode()
    assert len(raw) == RPC_TENSOR_SIZE == 296
    # offsetof() of each field in the packed struct (checked with a C compiler).
    for offset, width, value in [
        (0, 8, t.id),
        (8, 4, t.type),
        (12, 8, t.buffer),
        (20, 4, 4),
        (36, 4, 5),
        (52, 4, 6),
        (56, 4, 7),
        (120, 4, 8),
        (124, 8, 9),
        (204, 8, 10),
        (212, 8, 11),
        (220, 8, 12),
        (292, 4, 13),
    ]:
        assert int.from_bytes(raw[offset : offset + width], "little") == value
    assert raw[228:292] == b"n" + bytes(63)
    assert RpcTensor.decode(raw) == t


def test_set_tensor_is_tensor_then_cache_flag_then_offset_then_data() -> None:
    wire = encode_set_tensor(tensor(), 0x10, b"DATA", cache_flag=1)
    assert wire[0] == 6 and RpcCommand.SET_TENSOR.value == 6
    assert int.from_bytes(wire[1:9], "little") == SET_TENSOR_HEADER_SIZE + 4 == 309
    payload = wire[COMMAND_HEADER_SIZE:]
    assert payload[296] == 1
    assert int.from_bytes(payload[297:305], "little") == 0x10
    assert payload[305:] == b"DATA"


def test_hello_is_command_14_with_24_bytes_of_caps() -> None:
    assert HELLO.hex() == "0e" + "1800000000000000" + "00" * 24
    assert RpcRequestParser().feed(HELLO) == [Hello(bytes(24))]


def test_fixed_request_sizes_match_the_c_structs() -> None:
    assert REQUEST_SIZES[RpcCommand.GET_ALLOC_SIZE] == 3260
    assert REQUEST_SIZES[RpcCommand.MEMSET_TENSOR] == 313
    assert REQUEST_SIZES[RpcCommand.SET_TENSOR_HASH] == 312
    assert REQUEST_SIZES[RpcCommand.COPY_TENSOR] == 592
    assert REQUEST_SIZES[RpcCommand.ALLOC_BUFFER] == 12


# Events.


def test_upload_is_announced_with_its_descriptor_then_streamed() -> None:
    parser = RpcRequestParser()
    t = tensor("output.weight")
    wire = HELLO + encode_set_tensor(t, 128, b"x" * 1000) + encode_command(RpcCommand.DEVICE_COUNT)
    events = parser.feed(wire)
    assert isinstance(events[1], TensorUpload)
    upload = events[1]
    assert (upload.tensor.name, upload.offset, upload.data_length) == ("output.weight", 128, 1000)
    assert upload.payload_length == 1305 and upload.tensor == t
    assert isinstance(events[2], TensorData) and events[2].data == b"x" * 1000
    assert events[3:] == [TensorUploadEnd(), Request(RpcCommand.DEVICE_COUNT, b"")]
    assert parser.at_boundary


def test_upload_data_is_never_copied_or_buffered() -> None:
    parser = RpcRequestParser()
    data = bytes(range(256)) * 4096  # 1 MiB
    wire = HELLO + encode_set_tensor(tensor(), 0, data)
    head, body = wire[: len(HELLO) + 9 + 305], wire[len(HELLO) + 9 + 305 :]
    parser.feed(head)
    seen = bytearray()
    for i in range(0, len(body), 65536):
        chunk = body[i : i + 65536]
        events = parser.feed(chunk)
        assert parser.buffered == 0
        for event in events:
            if isinstance(event, TensorData):
                assert event.data.obj is chunk
                seen += event.data
    assert seen == data and parser.at_boundary


def test_stream_must_start_with_hello() -> None:
    with pytest.raises(ProtocolError, match="must start with HELLO"):
        RpcRequestParser().feed(encode_command(RpcCommand.DEVICE_COUNT))


def test_old_hello_without_caps_is_refused() -> None:
    with pytest.raises(ProtocolError, match="HELLO"):
        RpcRequestParser().feed(encode_command(RpcCommand.HELLO))


@pytest.mark.parametrize("byte", [RpcCommand.HELLO, 18, 19, 255])
def test_repeated_hello_and_unknown_commands_are_refused(byte: int) -> None:
    parser = RpcRequestParser()
    parser.feed(HELLO)
    with pytest.raises(ProtocolError, match=f"command {byte}"):
        parser.feed(bytes((byte,)) + bytes(8))


def test_fixed_size_command_with_another_size_is_refused() -> None:
    parser = RpcRequestParser()
    with pytest.raises(ProtocolError, match="ALLOC_BUFFER payload is 11 bytes, not 12"):
        parser.feed(HELLO + encode_command(RpcCommand.ALLOC_BUFFER, bytes(11)))


def test_oversized_graph_is_refused_from_its_header_alone() -> None:
    parser = RpcRequestParser(max_graph_bytes=1024)
    header = bytes((RpcCommand.GRAPH_COMPUTE,)) + (1025).to_bytes(8, "little")
    with pytest.raises(ProtocolError, match="GRAPH_COMPUTE"):
        parser.feed(HELLO + header)
    assert parser.buffered == 0


def test_short_or_huge_set_tensor_is_refused() -> None:
    parser = RpcRequestParser(max_tensor_bytes=10)
    parser.feed(HELLO)
    with pytest.raises(ProtocolError, match="SET_TENSOR"):
        parser.feed(encode_command(RpcCommand.SET_TENSOR, bytes(304)))
    parser = RpcRequestParser(max_tensor_bytes=10)
    with pytest.raises(ProtocolError, match="SET_TENSOR"):
        parser.feed(HELLO + bytes((6,)) + (305 + 11).to_bytes(8, "little"))


def test_a_failed_parser_stays_failed() -> None:
    parser = RpcRequestParser()
    with pytest.raises(ProtocolError):
        parser.feed(b"\x00" * 9)
    with pytest.raises(ProtocolError):
        parser.feed(HELLO)


def test_stream_ending_inside_a_command_is_an_error() -> None:
    parser = RpcRequestParser()
    parser.feed(HELLO + encode_set_tensor(tensor(), 0, b"abc")[:-1])
    with pytest.raises(ProtocolError, match="inside a command"):
        parser.end_of_stream()
    parser = RpcRequestParser()
    parser.feed(HELLO)
    parser.end_of_stream()


# Properties.


@settings(max_examples=150, deadline=None)
@given(streams(), st.lists(st.integers(0, 2**20), max_size=30))
def test_any_split_of_a_stream_parses_identically(
    stream: tuple[bytes, list[Expected]], cuts: list[int]
) -> None:
    wire, expected = stream
    parser = RpcRequestParser()
    events = feed_all(parser, pieces(wire, cuts))
    assert collect(events) == expected
    parser.end_of_stream()
    whole = RpcRequestParser().feed(wire)
    assert collect(whole) == expected


@settings(max_examples=100, deadline=None)
@given(streams(), st.lists(st.integers(0, 2**20), max_size=10))
def test_events_re_encode_to_the_exact_bytes(
    stream: tuple[bytes, list[Expected]], cuts: list[int]
) -> None:
    wire, _ = stream
    out = bytearray()
    for event in feed_all(RpcRequestParser(), pieces(wire, cuts)):
        if isinstance(event, Hello | Request):
            out += event.wire
        elif isinstance(event, TensorUpload):
            out += event.wire_prefix
        elif isinstance(event, TensorData):
            out += event.data
    assert out == wire


@settings(max_examples=300, deadline=None)
@given(
    st.booleans(),
    st.binary(max_size=4000),
    st.lists(st.integers(0, 2**20), max_size=20),
)
def test_hostile_bytes_raise_only_protocol_error(
    with_hello: bool, junk: bytes, cuts: list[int]
) -> None:
    parser = RpcRequestParser(max_graph_bytes=4096)
    data = (HELLO if with_hello else b"") + junk
    try:
        feed_all(parser, pieces(data, cuts))
        parser.end_of_stream()
    except ProtocolError:
        with pytest.raises(ProtocolError):
            parser.feed(b"\x00")


@settings(max_examples=300, deadline=None)
@given(
    st.integers(0, 255),
    st.one_of(U64, st.sampled_from([0, 12, 304, 305, 2**63, 2**64 - 1])),
    st.binary(max_size=600),
)
def test_hostile_headers_raise_only_protocol_error(byte: int, size: int, rest: bytes) -> None:
    parser = RpcRequestParser(max_graph_bytes=4096)
    try:
        parser.feed(HELLO + bytes((byte,)) + size.to_bytes(8, "little") + rest)
    except ProtocolError:
        return
    assert parser.buffered <= parser.max_buffered
