"""The shared /mesh/* framing: varint length prefix + deterministic, restricted CBOR."""

from __future__ import annotations

import itertools
import math
from typing import Any

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshp2p._errors import MeshError, ProtocolError
from meshp2p.transport._wire import (
    FrameDecoder,
    decode_cbor,
    encode_cbor,
    encode_frame,
    encode_varint,
    message_type,
)

DEEP: Any = 1
for _ in range(20):
    DEEP = [DEEP]


def frame_of(body: bytes) -> bytes:
    return encode_varint(len(body)) + body


def test_protocol_error_is_a_mesh_error() -> None:
    assert issubclass(ProtocolError, MeshError)


@pytest.mark.parametrize(
    ("value", "encoded"),
    [(0, "00"), (1, "01"), (127, "7f"), (128, "8001"), (300, "ac02"), (16384, "808001")],
)
def test_varint_matches_multiformats_examples(value: int, encoded: str) -> None:
    assert encode_varint(value).hex() == encoded


def test_frame_is_varint_length_then_canonical_cbor() -> None:
    frame = encode_frame({"t": "x", "b": 1, "aa": [1.5, b"\x00"]})
    body = cbor2.dumps({"t": "x", "b": 1, "aa": [1.5, b"\x00"]}, canonical=True)
    assert frame == bytes([len(body)]) + body


def test_map_keys_are_encoded_in_deterministic_order() -> None:
    # RFC 8949 §4.2.1: bytewise order of the encoded keys, so shorter text keys first.
    assert encode_cbor({"bb": 1, "a": 2, "c": 3}) == bytes.fromhex("a361610261630362626201")


def test_floats_are_encoded_in_their_shortest_exact_form() -> None:
    assert encode_cbor(1.5).hex() == "f93e00"
    assert encode_cbor(100000.0).hex() == "fa47c35000"
    assert encode_cbor(1.1).hex() == "fb3ff199999999999a"


@pytest.mark.parametrize(
    "value",
    [math.nan, math.inf, {1: "int key"}, 2**64, object(), {"deep": DEEP}],
)
def test_encoder_refuses_values_outside_the_data_model(value: Any) -> None:
    with pytest.raises(ValueError):
        encode_cbor(value)


def test_decoder_returns_each_complete_frame() -> None:
    frames = encode_frame({"t": "a"}) + encode_frame({"t": "b", "n": -5})
    assert FrameDecoder(1024).feed(frames) == [{"t": "a"}, {"t": "b", "n": -5}]


def test_decoder_buffers_a_frame_split_across_feeds() -> None:
    frame = encode_frame({"t": "hello", "data": bytes(300)})
    decoder = FrameDecoder(1024)
    out = []
    for i in range(len(frame)):
        out += decoder.feed(frame[i : i + 1])
    assert out == [{"t": "hello", "data": bytes(300)}]
    assert decoder.buffered == 0


def test_declared_length_over_the_limit_is_refused_before_the_body_arrives() -> None:
    decoder = FrameDecoder(100)
    with pytest.raises(ProtocolError, match="over the 100-byte limit"):
        decoder.feed(encode_varint(101))
    assert decoder.buffered == 0


def test_a_huge_declared_length_is_refused_from_its_first_bytes() -> None:
    decoder = FrameDecoder(64 * 1024)
    with pytest.raises(ProtocolError):
        decoder.feed(b"\xff\xff\xff")


def test_varint_longer_than_nine_bytes_is_refused() -> None:
    with pytest.raises(ProtocolError, match="longer than 9 bytes"):
        FrameDecoder(100).feed(b"\x80" * 9 + b"\x01")


def test_non_minimal_varint_is_refused() -> None:
    with pytest.raises(ProtocolError, match="minimally"):
        FrameDecoder(100).feed(b"\x81\x00" + b"\xa0")


def test_empty_frame_is_refused() -> None:
    with pytest.raises(ProtocolError, match="empty"):
        FrameDecoder(100).feed(b"\x00")


@pytest.mark.parametrize(
    ("body", "why"),
    [
        ("83010203", "a frame must carry a CBOR map"),
        ("c1a0", "tags"),
        ("a16174c11a00000001", "tags"),
        ("a16174f97e00", "NaN"),
        ("a16174f97c00", "NaN"),
        ("a16174fb7ff8000000000000", "NaN"),
        ("a16174f7", "simple value 23"),
        ("a16174f0", "simple value 16"),
        ("bf6174a0ff", "indefinite"),
        ("a1617460ff", "trailing"),
        ("a2617401617402", "duplicate"),
        ("a10101", "keys must be text"),
        ("a16174629fff", "UTF-8"),
        ("a1617462", "exceeds the frame"),
        ("a161749bffffffffffffffff", "exceeds the frame"),
        ("a16174ff", "break"),
        ("a1617419", "truncated"),
        ("a161741c", "reserved"),
    ],
)
def test_malformed_cbor_is_refused_with_a_protocol_error(body: str, why: str) -> None:
    with pytest.raises(ProtocolError, match=why):
        FrameDecoder(100).feed(frame_of(bytes.fromhex(body)))


def test_nesting_deeper_than_the_limit_is_refused() -> None:
    body = b"\xa1\x61t" + b"\x81" * 40 + b"\x00"
    with pytest.raises(ProtocolError, match="deeply"):
        FrameDecoder(100).feed(frame_of(body))


def test_decoder_stays_failed_after_a_protocol_error() -> None:
    decoder = FrameDecoder(100)
    with pytest.raises(ProtocolError):
        decoder.feed(b"\x00")
    with pytest.raises(ProtocolError):
        decoder.feed(encode_frame({"t": "ok"}))


def test_one_big_write_of_many_frames_never_buffers_more_than_one() -> None:
    frame = encode_frame({"t": "x", "pad": bytes(50)})
    decoder = FrameDecoder(len(frame))
    assert len(decoder.feed(frame * 1000)) == 1000


def test_message_type_requires_a_text_t_field() -> None:
    assert message_type({"t": "digest"}) == "digest"
    for bad in ({}, {"t": 1}, {"t": ""}):
        with pytest.raises(ProtocolError):
            message_type(bad)


# Hypothesis: the data model round-trips, and no input makes the decoder misbehave.

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**64), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
    | st.binary(max_size=20)
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
maps = st.dictionaries(st.text(max_size=8), values, max_size=6)


@settings(max_examples=100, deadline=None)
@given(maps)
def test_any_map_in_the_data_model_round_trips_and_decodes_as_cbor2_does(
    msg: dict[str, Any],
) -> None:
    frame = encode_frame(msg)
    (decoded,) = FrameDecoder(len(frame)).feed(frame)
    assert decoded == msg
    assert encode_frame(decoded) == frame
    body = encode_cbor(msg)
    assert decode_cbor(body) == cbor2.loads(body) == msg


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    edges = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges)]


hostile = st.one_of(
    st.binary(max_size=300),
    # Mostly valid framing around random bodies reaches the CBOR reader more often.
    st.lists(st.binary(max_size=40), max_size=6).map(
        lambda bodies: b"".join(frame_of(b) for b in bodies)
    ),
    st.lists(maps, max_size=3).map(lambda ms: b"".join(encode_frame(m) for m in ms)),
)


@settings(max_examples=300, deadline=None)
@given(hostile, st.lists(st.integers(min_value=0), max_size=8), st.integers(1, 200))
def test_hostile_bytes_in_any_split_raise_only_protocol_error_and_stay_bounded(
    data: bytes, cuts: list[int], max_frame: int
) -> None:
    decoder = FrameDecoder(max_frame)
    try:
        for chunk in split(data, cuts):
            for msg in decoder.feed(chunk):
                assert isinstance(msg, dict)
            assert decoder.buffered <= max_frame + 10
    except ProtocolError:
        pass


@settings(max_examples=40, deadline=None)
@given(st.lists(maps, min_size=1, max_size=4), st.lists(st.integers(min_value=0), max_size=8))
def test_valid_frames_decode_identically_however_the_stream_is_split(
    msgs: list[dict[str, Any]], cuts: list[int]
) -> None:
    data = b"".join(encode_frame(m) for m in msgs)
    decoder = FrameDecoder(len(data))
    out: list[dict[str, Any]] = []
    for chunk in split(data, cuts):
        out += decoder.feed(chunk)
    assert out == msgs


@given(st.binary(max_size=64), st.integers(0, 200))
def test_feed_with_a_limit_leaves_the_bytes_after_the_frame(tail: bytes, cut: int) -> None:
    # A stream that starts with one frame, then carries other bytes (/mesh/rpc-tensor).
    wire = encode_frame({"t": "hello", "v": 1}) + tail
    decoder = FrameDecoder(4096)
    first = decoder.feed(wire[:cut], limit=1)
    if first:
        frames, rest = first, decoder.rest + wire[cut:]
    else:
        frames, rest = decoder.feed(wire[cut:], limit=1), decoder.rest
    assert frames == [{"t": "hello", "v": 1}] and rest == tail
