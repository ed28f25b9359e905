"""Framing shared by every /mesh/* protocol: varint-length-prefixed, deterministic CBOR maps.

Pure bytes in, maps out (and back); see protocols/README.md for the rules this enforces.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping
from typing import Any

import cbor2

from .._errors import ProtocolError

TYPE_KEY = "t"
"""Every top-level map names its message type under this key, as a short text string."""

MAX_VARINT_LEN = 9
"""The multiformats unsigned-varint spec caps a varint at 9 bytes (63 bits)."""

MAX_DEPTH = 16
"""Nesting deeper than any /mesh/* message needs is refused before it can exhaust the stack."""

_UINT64_MAX = 2**64 - 1
_NINT64_MIN = -(2**64)


def encode_varint(value: int) -> bytes:
    """Return the minimal unsigned LEB128 encoding of ``value``."""
    if value < 0 or value >= 2**63:
        raise ValueError(f"varint out of range: {value}")
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def encode_cbor(value: Any) -> bytes:
    """Return the deterministic CBOR (RFC 8949 §4.2.1) encoding of ``value``.

    Only the data model /mesh/* protocols allow is accepted (text-keyed maps, arrays,
    text, bytes, 64-bit integers, finite floats, booleans, null), so we never send a
    value our own decoder would refuse.
    """
    return cbor2.dumps(_plain(value, 0), canonical=True)


def encode_frame(msg: Mapping[str, Any]) -> bytes:
    """Return ``msg`` as one frame: varint length prefix, then its deterministic CBOR."""
    if not isinstance(msg, Mapping):
        raise ValueError("a frame carries a CBOR map")
    body = encode_cbor(msg)
    return encode_varint(len(body)) + body


def _plain(value: Any, depth: int) -> Any:
    if depth > MAX_DEPTH:
        raise ValueError("value nests too deeply to encode")
    # bool before int: bool is an int subclass but a distinct CBOR type.
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int):
        if not _NINT64_MIN <= value <= _UINT64_MAX:
            raise ValueError(f"integer does not fit CBOR's 64-bit range: {value}")
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("NaN and infinities are not allowed on the wire")
        return value
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValueError(f"map keys must be text strings, not {type(key).__name__}")
            out[key] = _plain(item, depth + 1)
        return out
    if isinstance(value, list | tuple):
        return [_plain(item, depth + 1) for item in value]
    raise ValueError(f"cannot encode {type(value).__name__} in a /mesh/* message")


def decode_cbor(data: bytes) -> Any:
    """Decode exactly one CBOR data item from ``data``, refusing anything outside the data model.

    Refused with ProtocolError: tags, indefinite lengths, simple values other than
    false/true/null, NaN and infinities, non-text map keys, duplicate keys, invalid UTF-8,
    nesting deeper than MAX_DEPTH, and trailing bytes.
    """
    reader = _CborReader(bytes(data))
    value = reader.item(0)
    if reader.pos != len(reader.data):
        raise ProtocolError("trailing bytes after the CBOR item")
    return value


class _CborReader:
    """A strict, allocation-bounded CBOR reader: every length is checked against the bytes left."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        end = self.pos + n
        if end > len(self.data):
            raise ProtocolError("CBOR item is truncated")
        chunk = self.data[self.pos : end]
        self.pos = end
        return chunk

    def argument(self, info: int) -> int:
        if info < 24:
            return info
        if info == 24:
            return self.take(1)[0]
        if info == 25:
            return int.from_bytes(self.take(2), "big")
        if info == 26:
            return int.from_bytes(self.take(4), "big")
        if info == 27:
            return int.from_bytes(self.take(8), "big")
        if info == 31:
            raise ProtocolError("indefinite-length CBOR items are not allowed")
        raise ProtocolError(f"reserved CBOR additional information {info}")

    def length(self, info: int, min_item_size: int) -> int:
        n = self.argument(info)
        # A declared count can never exceed what the remaining bytes could hold, so a
        # hostile 2**64-element array fails here instead of in a loop or an allocation.
        if n * min_item_size > len(self.data) - self.pos:
            raise ProtocolError("CBOR length exceeds the frame")
        return n

    def item(self, depth: int) -> Any:
        if depth > MAX_DEPTH:
            raise ProtocolError("CBOR nests too deeply")
        initial = self.take(1)[0]
        major, info = initial >> 5, initial & 0x1F
        if major == 0:
            return self.argument(info)
        if major == 1:
            return -1 - self.argument(info)
        if major == 2:
            return self.take(self.length(info, 1))
        if major == 3:
            raw = self.take(self.length(info, 1))
            try:
                return raw.decode("utf-8")
            except UnicodeDecodeError:
                raise ProtocolError("CBOR text string is not valid UTF-8") from None
        if major == 4:
            return [self.item(depth + 1) for _ in range(self.length(info, 1))]
        if major == 5:
            out: dict[str, Any] = {}
            for _ in range(self.length(info, 2)):
                key = self.item(depth + 1)
                if not isinstance(key, str):
                    raise ProtocolError("CBOR map keys must be text strings")
                if key in out:
                    raise ProtocolError(f"duplicate CBOR map key {key!r}")
                out[key] = self.item(depth + 1)
            return out
        if major == 6:
            raise ProtocolError("CBOR tags are not allowed")
        return self.simple(info)

    def simple(self, info: int) -> Any:
        if info == 20:
            return False
        if info == 21:
            return True
        if info == 22:
            return None
        if info == 25:
            value: float = struct.unpack(">e", self.take(2))[0]
        elif info == 26:
            value = struct.unpack(">f", self.take(4))[0]
        elif info == 27:
            value = struct.unpack(">d", self.take(8))[0]
        elif info == 31:
            raise ProtocolError("unexpected CBOR break")
        else:
            raise ProtocolError(f"CBOR simple value {info} is not allowed")
        if not math.isfinite(value):
            raise ProtocolError("NaN and infinities are not allowed")
        return value


class FrameDecoder:
    """Turns a byte stream into decoded frames, holding at most ``max_frame + 9`` bytes.

    Feed it whatever the stream yields; it returns each complete frame's map. After a
    ProtocolError the stream is unusable, and every later ``feed`` raises again.
    """

    def __init__(self, max_frame: int) -> None:
        if max_frame < 1 or max_frame >= 2**63:
            raise ValueError(f"max_frame out of range: {max_frame}")
        self.max_frame = max_frame
        self._header = bytearray()
        self._length: int | None = None
        self._body = bytearray()
        self._error: str | None = None
        self.rest = b""

    @property
    def buffered(self) -> int:
        """Bytes held for a frame not yet complete."""
        return len(self._header) + len(self._body)

    def feed(self, data: bytes, *, limit: int | None = None) -> list[dict[str, Any]]:
        """The frames ``data`` completes; with ``limit``, at most that many, and the bytes
        after the last of them are left in ``rest`` (for a stream that changes framing
        after its first frames)."""
        if self._error is not None:
            raise ProtocolError(self._error)
        try:
            return self._feed(memoryview(data), limit)
        except ProtocolError as exc:
            self._error = str(exc)
            self._header.clear()
            self._body.clear()
            raise

    def _feed(self, data: memoryview, limit: int | None) -> list[dict[str, Any]]:
        frames: list[dict[str, Any]] = []
        pos = 0
        self.rest = b""
        while pos < len(data):
            if self._length is None:
                self._header.append(data[pos])
                pos += 1
                self._length = self._parse_header()
                if self._length is None:
                    continue
            # Only take this frame's bytes: the input may hold many frames, and copying
            # it all into the buffer would let one big write defeat max_frame.
            want = self._length - len(self._body)
            self._body += data[pos : pos + want]
            pos += min(want, len(data) - pos)
            if len(self._body) == self._length:
                frames.append(self._finish())
                if len(frames) == limit:
                    self.rest = bytes(data[pos:])
                    break
        return frames

    def _parse_header(self) -> int | None:
        value = 0
        for shift, byte in enumerate(self._header):
            value |= (byte & 0x7F) << (7 * shift)
        # Later bytes only add bits, so a prefix already over the limit is final: refuse
        # before reading (or buffering) any more of it.
        if value > self.max_frame:
            raise ProtocolError(
                f"frame declares {value}+ bytes, over the {self.max_frame}-byte limit"
            )
        last = self._header[-1]
        if last & 0x80:
            if len(self._header) >= MAX_VARINT_LEN:
                raise ProtocolError("frame length varint is longer than 9 bytes")
            return None
        if last == 0 and len(self._header) > 1:
            raise ProtocolError("frame length varint is not minimally encoded")
        self._header.clear()
        return value

    def _finish(self) -> dict[str, Any]:
        body = bytes(self._body)
        self._body.clear()
        self._length = None
        if not body:
            raise ProtocolError("empty frame")
        msg = decode_cbor(body)
        if not isinstance(msg, dict):
            raise ProtocolError("a frame must carry a CBOR map")
        return msg


def message_type(msg: Mapping[str, Any]) -> str:
    """Return the message type of a decoded map, or raise ProtocolError if it has none."""
    kind = msg.get(TYPE_KEY)
    if not isinstance(kind, str) or not kind:
        raise ProtocolError(f"message has no text {TYPE_KEY!r} (type) field")
    return kind


# Field readers shared by the protocol cores. Each raises ProtocolError naming the field,
# so a peer's bug report reads "field 'seq' must be ..." instead of a KeyError.


def text_field(
    msg: Mapping[str, Any], key: str, *, max_len: int, min_len: int = 1, where: str = ""
) -> str:
    value = msg.get(key)
    if not isinstance(value, str):
        raise ProtocolError(f"{where}field {key!r} must be a text string")
    if not min_len <= len(value) <= max_len:
        raise ProtocolError(f"{where}field {key!r} must be {min_len}..{max_len} characters")
    return value


def bytes_field(
    msg: Mapping[str, Any], key: str, *, max_len: int, min_len: int = 1, where: str = ""
) -> bytes:
    value = msg.get(key)
    if not isinstance(value, bytes):
        raise ProtocolError(f"{where}field {key!r} must be a byte string")
    if not min_len <= len(value) <= max_len:
        raise ProtocolError(f"{where}field {key!r} must be {min_len}..{max_len} bytes")
    return value


def uint_field(msg: Mapping[str, Any], key: str, *, where: str = "") -> int:
    value = msg.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ProtocolError(f"{where}field {key!r} must be an unsigned integer")
    return value


def bool_field(msg: Mapping[str, Any], key: str, *, where: str = "") -> bool:
    value = msg.get(key)
    if not isinstance(value, bool):
        raise ProtocolError(f"{where}field {key!r} must be a boolean")
    return value


def list_field(msg: Mapping[str, Any], key: str, *, max_len: int, where: str = "") -> list[Any]:
    value = msg.get(key)
    if not isinstance(value, list):
        raise ProtocolError(f"{where}field {key!r} must be an array")
    if len(value) > max_len:
        raise ProtocolError(f"{where}field {key!r} has more than {max_len} items")
    return value


def map_field(msg: Mapping[str, Any], key: str, *, max_len: int, where: str = "") -> dict[str, Any]:
    value = msg.get(key)
    if not isinstance(value, dict):
        raise ProtocolError(f"{where}field {key!r} must be a map")
    if len(value) > max_len:
        raise ProtocolError(f"{where}field {key!r} has more than {max_len} entries")
    return value
