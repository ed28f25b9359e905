"""llama.cpp RPC (protocol 7.0.0), client-to-server direction: bytes in, command events out.

Sans-I/O. The /mesh/rpc-tensor tunnel feeds it what llama.cpp sends a worker, to find
command boundaries and tensor uploads; the byte layouts, with references to the vendored
ggml-rpc.cpp, are in protocols/rpc-tensor.md.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from typing import ClassVar, Final, NoReturn

from .._errors import ProtocolError

RPC_PROTO_VERSION: Final = (7, 0, 0)
"""RPC_PROTO_{MAJOR,MINOR,PATCH}_VERSION in the vendored ggml/include/ggml-rpc.h."""

CONN_CAPS_SIZE: Final = 24
COMMAND_HEADER_SIZE: Final = 9
"""One command byte, then the payload size as a little-endian uint64."""

_TENSOR = struct.Struct("<QIQ4I4II16ii10QQQQ64si")
RPC_TENSOR_SIZE: Final = _TENSOR.size  # 296
_UPLOAD_TAIL = struct.Struct("<BQ")
SET_TENSOR_HEADER_SIZE: Final = RPC_TENSOR_SIZE + _UPLOAD_TAIL.size  # 305
GRAPH_COMPUTE_MIN_SIZE: Final = 12
"""device, n_nodes and n_tensors (uint32 each), with no nodes and no tensors."""

DEFAULT_MAX_GRAPH_BYTES: Final = 64 * 2**20
DEFAULT_MAX_TENSOR_BYTES: Final = 2**40

SET_TENSOR_GGUF: Final = 0x80
"""The ``gguf-ref`` extension's command: a SET_TENSOR whose data is given as segments, some
of them references to a GGUF file the worker holds. Never a llama.cpp command (servers close
on ids >= 19), so a worker tunnel always rewrites it into a SET_TENSOR."""
SEGMENT_RAW: Final = 0x00
SEGMENT_REF: Final = 0x01
MAX_RAW_SEGMENT: Final = 1 << 20
_RAW_HEAD = struct.Struct("<BI")
_REF_HEAD = struct.Struct("<B32sQQ")
RAW_SEGMENT_HEADER_SIZE: Final = _RAW_HEAD.size  # 5
REF_SEGMENT_SIZE: Final = _REF_HEAD.size  # 49


class RpcCommand(enum.IntEnum):
    """``enum rpc_cmd``; the value is the command byte on the wire."""

    ALLOC_BUFFER = 0
    GET_ALIGNMENT = 1
    GET_MAX_SIZE = 2
    BUFFER_GET_BASE = 3
    FREE_BUFFER = 4
    BUFFER_CLEAR = 5
    SET_TENSOR = 6
    SET_TENSOR_HASH = 7
    GET_TENSOR = 8
    COPY_TENSOR = 9
    GRAPH_COMPUTE = 10
    GET_DEVICE_MEMORY = 11
    INIT_TENSOR = 12
    GET_ALLOC_SIZE = 13
    HELLO = 14
    DEVICE_COUNT = 15
    GRAPH_RECOMPUTE = 16
    MEMSET_TENSOR = 17
    # RPC_CMD_NONE (18) never goes on the wire: the client queues it as a barrier.


REQUEST_SIZES: Final[dict[RpcCommand, int]] = {
    RpcCommand.ALLOC_BUFFER: 12,
    RpcCommand.GET_ALIGNMENT: 4,
    RpcCommand.GET_MAX_SIZE: 4,
    RpcCommand.BUFFER_GET_BASE: 8,
    RpcCommand.FREE_BUFFER: 8,
    RpcCommand.BUFFER_CLEAR: 9,
    RpcCommand.SET_TENSOR_HASH: RPC_TENSOR_SIZE + 16,
    RpcCommand.GET_TENSOR: RPC_TENSOR_SIZE + 16,
    RpcCommand.COPY_TENSOR: 2 * RPC_TENSOR_SIZE,
    RpcCommand.GET_DEVICE_MEMORY: 4,
    RpcCommand.INIT_TENSOR: RPC_TENSOR_SIZE,
    RpcCommand.GET_ALLOC_SIZE: 4 + 11 * RPC_TENSOR_SIZE,
    RpcCommand.HELLO: CONN_CAPS_SIZE,
    RpcCommand.DEVICE_COUNT: 0,
    RpcCommand.GRAPH_RECOMPUTE: 4,
    RpcCommand.MEMSET_TENSOR: RPC_TENSOR_SIZE + 17,
}
"""The exact payload size of every fixed-size request; the server closes on any other.
SET_TENSOR and GRAPH_COMPUTE are the variable-size ones."""


@dataclass(frozen=True, kw_only=True)
class RpcTensor:
    """``struct rpc_tensor``: a tensor as the client describes it (296 packed bytes).

    ``data`` and ``buffer`` are addresses in the server's memory, ``id`` and ``src`` the
    client's tensor pointers; ``name`` is the C string before the first NUL. The fields
    with defaults default to a leaf tensor (no op, no sources, not a view), as a weight
    being uploaded is.
    """

    id: int
    type: int
    buffer: int
    ne: tuple[int, int, int, int]
    nb: tuple[int, int, int, int]
    op: int = 0
    op_params: tuple[int, ...] = (0,) * 16
    flags: int = 0
    src: tuple[int, ...] = (0,) * 10
    view_src: int = 0
    view_offs: int = 0
    data: int
    name: str
    use_count: int = 0

    @classmethod
    def decode(cls, raw: bytes | memoryview) -> RpcTensor:
        v = _TENSOR.unpack(raw)
        name = v[42].split(b"\0", 1)[0].decode("utf-8", "replace")
        return cls(
            id=v[0],
            type=v[1],
            buffer=v[2],
            ne=(v[3], v[4], v[5], v[6]),
            nb=(v[7], v[8], v[9], v[10]),
            op=v[11],
            op_params=tuple(v[12:28]),
            flags=v[28],
            src=tuple(v[29:39]),
            view_src=v[39],
            view_offs=v[40],
            data=v[41],
            name=name,
            use_count=v[43],
        )

    def encode(self) -> bytes:
        """The 296 bytes; ValueError if a field does not fit its C type."""
        name = self.name.encode()
        if len(name) >= 64 or b"\0" in name:
            raise ValueError("an rpc_tensor name is at most 63 bytes of UTF-8, without NUL")
        if len(self.op_params) != 16 or len(self.src) != 10:
            raise ValueError("an rpc_tensor has 16 op_params and 10 src")
        try:
            return _TENSOR.pack(
                self.id,
                self.type,
                self.buffer,
                *self.ne,
                *self.nb,
                self.op,
                *self.op_params,
                self.flags,
                *self.src,
                self.view_src,
                self.view_offs,
                self.data,
                name,
                self.use_count,
            )
        except struct.error as exc:
            raise ValueError(f"rpc_tensor field out of range: {exc}") from None


# Events.


@dataclass(frozen=True)
class Hello:
    """The HELLO every connection starts with. ``conn_caps`` asks for a transport upgrade
    (RDMA) when not all zero; a tunnel must send zeros on (see rpc-tensor.md)."""

    conn_caps: bytes

    @property
    def wire(self) -> bytes:
        return encode_command(RpcCommand.HELLO, self.conn_caps)


@dataclass(frozen=True)
class Request:
    """A whole command other than HELLO and SET_TENSOR, with its payload."""

    command: RpcCommand
    payload: bytes

    @property
    def wire(self) -> bytes:
        return encode_command(self.command, self.payload)


@dataclass(frozen=True)
class TensorUpload:
    """The start of a SET_TENSOR: write ``data_length`` bytes into ``tensor`` at ``offset``.

    The bytes follow as TensorData events, then TensorUploadEnd. ``header`` is the payload's
    first 305 bytes exactly as received (rpc_tensor, cache_flag, offset).
    """

    tensor: RpcTensor
    cache_flag: int
    offset: int
    data_length: int
    header: bytes

    command: ClassVar[RpcCommand] = RpcCommand.SET_TENSOR

    @property
    def payload_length(self) -> int:
        return SET_TENSOR_HEADER_SIZE + self.data_length

    @property
    def wire_prefix(self) -> bytes:
        """The bytes of the command up to its data: command byte, size, header."""
        return (
            bytes((RpcCommand.SET_TENSOR,))
            + self.payload_length.to_bytes(8, "little")
            + (self.header)
        )


@dataclass(frozen=True)
class TensorData:
    """The next bytes of the current upload's data region.

    ``data`` is a slice of the buffer passed to ``feed`` (no copy): it stays valid while
    that buffer is not changed, which is always for ``bytes``.
    """

    data: memoryview


@dataclass(frozen=True)
class TensorUploadEnd:
    """The current upload's data is complete; the next event starts a new command."""


@dataclass(frozen=True)
class FileRegion:
    """The next ``length`` bytes of the current upload are the worker's own copy of the
    file with SHA-256 ``sha256``, from ``offset`` (a ``gguf-ref`` REF segment)."""

    sha256: bytes
    offset: int
    length: int


RpcEvent = Hello | Request | TensorUpload | TensorData | TensorUploadEnd | FileRegion


def encode_gguf_header(upload: TensorUpload) -> bytes:
    """The start of the SET_TENSOR_GGUF that stands for ``upload``: id, size, header."""
    return bytes((SET_TENSOR_GGUF,)) + upload.payload_length.to_bytes(8, "little") + upload.header


def encode_raw_segment(data: bytes | memoryview) -> bytes:
    """A RAW segment: ``data`` (1 to 1 MiB bytes) as it is."""
    if not 1 <= len(data) <= MAX_RAW_SEGMENT:
        raise ValueError(f"a RAW segment holds 1..{MAX_RAW_SEGMENT} bytes, not {len(data)}")
    return _RAW_HEAD.pack(SEGMENT_RAW, len(data)) + bytes(data)


def encode_ref_segment(sha256: bytes, offset: int, length: int) -> bytes:
    """A REF segment: ``length`` bytes of the file ``sha256`` from ``offset``."""
    if len(sha256) != 32 or length < 1 or offset < 0:
        raise ValueError("a REF names a 32-byte sha256 and at least one byte")
    return _REF_HEAD.pack(SEGMENT_REF, sha256, offset, length)


def encode_command(command: RpcCommand, payload: bytes | memoryview = b"") -> bytes:
    """One command as llama.cpp frames it: ``| cmd (1) | size (8, LE) | payload |``."""
    return bytes((command,)) + len(payload).to_bytes(8, "little") + bytes(payload)


def encode_set_tensor(
    tensor: RpcTensor, offset: int, data: bytes | memoryview, *, cache_flag: int = 0
) -> bytes:
    """A whole SET_TENSOR command, as ``serialize_set_tensor`` builds it."""
    return encode_command(
        RpcCommand.SET_TENSOR, tensor.encode() + _UPLOAD_TAIL.pack(cache_flag, offset) + data
    )


class _State(enum.Enum):
    HELLO_HEADER = enum.auto()
    HEADER = enum.auto()
    PAYLOAD = enum.auto()
    UPLOAD_HEADER = enum.auto()
    UPLOAD_DATA = enum.auto()
    SEGMENT_KIND = enum.auto()
    RAW_LENGTH = enum.auto()
    RAW_DATA = enum.auto()
    REF_BODY = enum.auto()
    FAILED = enum.auto()


class RpcRequestParser:
    """Parses what an RPC client (llama.cpp) sends its server, as the server would check it.

    ``feed(data)`` returns the events the new bytes complete. The parser holds at most
    ``max_buffered`` bytes: upload data is never buffered (TensorData events are slices of
    the input) and a GRAPH_COMPUTE payload is refused above ``max_graph_bytes``. Malformed
    input raises ProtocolError, after which every call raises it again.

    ``gguf_files`` (SHA-256 -> file size) turns on the ``gguf-ref`` extension, as a worker
    tunnel parses it: a SET_TENSOR_GGUF gives a TensorUpload, then TensorData (RAW) and
    FileRegion (REF, checked against ``gguf_files``) events, then TensorUploadEnd.
    """

    def __init__(
        self,
        *,
        max_graph_bytes: int = DEFAULT_MAX_GRAPH_BYTES,
        max_tensor_bytes: int = DEFAULT_MAX_TENSOR_BYTES,
        gguf_files: dict[bytes, int] | None = None,
    ) -> None:
        if max_graph_bytes < GRAPH_COMPUTE_MIN_SIZE or max_tensor_bytes < 0:
            raise ValueError("limits too small")
        self.max_graph_bytes = max_graph_bytes
        self.max_tensor_bytes = max_tensor_bytes
        self.gguf_files = gguf_files
        self._by_reference = False
        self._state = _State.HELLO_HEADER
        self._need = COMMAND_HEADER_SIZE
        self._buf = bytearray()
        self._command = RpcCommand.HELLO
        self._remaining = 0
        self._segment = 0
        self._error = ""

    @property
    def max_buffered(self) -> int:
        return max(self.max_graph_bytes, *REQUEST_SIZES.values(), SET_TENSOR_HEADER_SIZE)

    @property
    def in_upload(self) -> bool:
        """True inside a SET_TENSOR or SET_TENSOR_GGUF, after its header event."""
        return self._state in (
            _State.UPLOAD_DATA,
            _State.SEGMENT_KIND,
            _State.RAW_LENGTH,
            _State.RAW_DATA,
            _State.REF_BODY,
        )

    @property
    def buffered(self) -> int:
        """Bytes held for a command header or payload not yet complete."""
        return len(self._buf)

    @property
    def at_boundary(self) -> bool:
        """True between commands: the stream may end here."""
        return self._state in (_State.HELLO_HEADER, _State.HEADER) and not self._buf

    def end_of_stream(self) -> None:
        """The client closed its side; ProtocolError if it stopped inside a command."""
        self._check()
        if not self.at_boundary:
            self._fail("RPC stream ended inside a command")

    def feed(self, data: bytes | bytearray | memoryview) -> list[RpcEvent]:
        self._check()
        view = memoryview(data).cast("B")
        events: list[RpcEvent] = []
        pos = 0
        while True:
            if self._state is _State.UPLOAD_DATA:
                take = min(self._remaining, len(view) - pos)
                if take:
                    events.append(TensorData(view[pos : pos + take]))
                    pos += take
                    self._remaining -= take
                if self._remaining:
                    return events
                events.append(TensorUploadEnd())
                self._expect_header()
                continue
            if self._state is _State.RAW_DATA:
                take = min(self._segment, len(view) - pos)
                if take:
                    events.append(TensorData(view[pos : pos + take]))
                    pos += take
                    self._segment -= take
                if self._segment:
                    return events
                self._next_segment(events)
                continue
            if not self._buf and len(view) - pos >= self._need:
                chunk = view[pos : pos + self._need]
                pos += self._need
            else:
                take = min(self._need - len(self._buf), len(view) - pos)
                self._buf += view[pos : pos + take]
                pos += take
                if len(self._buf) < self._need:
                    return events
                chunk = memoryview(bytes(self._buf))
                self._buf.clear()
            self._advance(chunk, events)

    def _advance(self, chunk: memoryview, events: list[RpcEvent]) -> None:
        state = self._state
        if state in (_State.HELLO_HEADER, _State.HEADER):
            self._start_command(chunk[0], int.from_bytes(chunk[1:], "little"))
        elif state is _State.PAYLOAD:
            if self._command is RpcCommand.HELLO:
                events.append(Hello(bytes(chunk)))
            else:
                events.append(Request(self._command, bytes(chunk)))
            self._expect_header()
        elif state is _State.UPLOAD_HEADER:
            cache_flag, offset = _UPLOAD_TAIL.unpack(chunk[RPC_TENSOR_SIZE:])
            events.append(
                TensorUpload(
                    tensor=RpcTensor.decode(chunk[:RPC_TENSOR_SIZE]),
                    cache_flag=cache_flag,
                    offset=offset,
                    data_length=self._remaining,
                    header=bytes(chunk),
                )
            )
            if self._by_reference:
                self._next_segment(events)
            else:
                self._state = _State.UPLOAD_DATA
        elif state is _State.SEGMENT_KIND:
            kind = chunk[0]
            if kind == SEGMENT_RAW:
                self._state, self._need = _State.RAW_LENGTH, RAW_SEGMENT_HEADER_SIZE - 1
            elif kind == SEGMENT_REF:
                self._state, self._need = _State.REF_BODY, REF_SEGMENT_SIZE - 1
            else:
                self._fail(f"unknown SET_TENSOR_GGUF segment kind {kind}")
        elif state is _State.RAW_LENGTH:
            length = int.from_bytes(chunk, "little")
            if not 1 <= length <= min(MAX_RAW_SEGMENT, self._remaining):
                self._fail(
                    f"RAW segment of {length} bytes: must be 1..{MAX_RAW_SEGMENT} "
                    f"and at most the {self._remaining} bytes the upload still needs"
                )
            self._remaining -= length
            self._segment = length
            self._state = _State.RAW_DATA
        else:  # REF_BODY
            _, sha, offset, length = _REF_HEAD.unpack(bytes((SEGMENT_REF,)) + bytes(chunk))
            assert self.gguf_files is not None
            size = self.gguf_files.get(sha)
            if size is None:
                self._fail(f"REF to file {sha.hex()[:16]}…, which this worker did not offer")
            if not 1 <= length <= self._remaining or offset + length > size:
                self._fail(
                    f"REF of {length} bytes at {offset}: outside the file ({size} bytes) "
                    f"or beyond the {self._remaining} bytes the upload still needs"
                )
            self._remaining -= length
            events.append(FileRegion(sha, offset, length))
            self._next_segment(events)

    def _next_segment(self, events: list[RpcEvent]) -> None:
        if self._remaining:
            self._state, self._need = _State.SEGMENT_KIND, 1
        else:
            events.append(TensorUploadEnd())
            self._expect_header()

    def _start_command(self, byte: int, size: int) -> None:
        if self._state is _State.HELLO_HEADER:
            if byte != RpcCommand.HELLO or size != CONN_CAPS_SIZE:
                self._fail(
                    f"RPC stream must start with HELLO of {CONN_CAPS_SIZE} bytes "
                    f"(protocol {'.'.join(map(str, RPC_PROTO_VERSION))}); "
                    f"got command {byte} of {size} bytes"
                )
            self._expect(RpcCommand.HELLO, size)
            return
        self._by_reference = False
        if byte == SET_TENSOR_GGUF and self.gguf_files is not None:
            self._by_reference = True
            byte = RpcCommand.SET_TENSOR
        elif byte == RpcCommand.HELLO or byte not in RpcCommand._value2member_map_:
            self._fail(f"unknown or repeated RPC command {byte}")
        command = RpcCommand(byte)
        fixed = REQUEST_SIZES.get(command)
        if fixed is not None:
            if size != fixed:
                self._fail(f"RPC {command.name} payload is {size} bytes, not {fixed}")
        elif command is RpcCommand.GRAPH_COMPUTE:
            if not GRAPH_COMPUTE_MIN_SIZE <= size <= self.max_graph_bytes:
                self._fail(
                    f"RPC GRAPH_COMPUTE payload of {size} bytes is outside "
                    f"{GRAPH_COMPUTE_MIN_SIZE}..{self.max_graph_bytes}"
                )
        else:  # SET_TENSOR
            if not 0 <= size - SET_TENSOR_HEADER_SIZE <= self.max_tensor_bytes:
                self._fail(
                    f"RPC SET_TENSOR payload of {size} bytes is outside "
                    f"{SET_TENSOR_HEADER_SIZE}..{SET_TENSOR_HEADER_SIZE + self.max_tensor_bytes}"
                )
            self._state = _State.UPLOAD_HEADER
            self._need = SET_TENSOR_HEADER_SIZE
            self._remaining = size - SET_TENSOR_HEADER_SIZE
            return
        self._expect(command, size)

    def _expect(self, command: RpcCommand, size: int) -> None:
        self._state = _State.PAYLOAD
        self._command = command
        self._need = size

    def _expect_header(self) -> None:
        self._state = _State.HEADER
        self._need = COMMAND_HEADER_SIZE

    def _check(self) -> None:
        if self._state is _State.FAILED:
            raise ProtocolError(self._error)

    def _fail(self, message: str) -> NoReturn:
        self._state = _State.FAILED
        self._error = message
        self._buf.clear()
        raise ProtocolError(message)
