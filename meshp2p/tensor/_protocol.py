"""``/mesh/rpc-tensor/1.0.0``, sans I/O: the hellos, and the two tunnels' byte rewriting.

See ``protocols/rpc-tensor.md``. A stream starts with one hello frame each way; then
the host → worker direction carries what the host's llama.cpp sends its RPC server
(possibly with ``gguf-ref`` SET_TENSOR_GGUF commands) and the other direction what the
server answers.

- ``HostRewriter`` turns llama.cpp's bytes into stream bytes: it zeroes the HELLO's
  ``conn_caps`` and replaces uploads of GGUF weights the worker holds by references.
- ``WorkerRewriter`` turns stream bytes back into llama.cpp's bytes for the local RPC
  server, reading referenced regions from the worker's own file.
- ``ResponseFilter`` zeroes ``conn_caps`` in the server's HELLO answer.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from .._errors import ProtocolError
from ..inference._gguf import GgufLayout
from ..transport._wire import list_field, message_type, text_field, uint_field
from ._rpc_wire import (
    CONN_CAPS_SIZE,
    MAX_RAW_SEGMENT,
    RPC_PROTO_VERSION,
    FileRegion,
    Hello,
    Request,
    RpcRequestParser,
    TensorData,
    TensorUpload,
    TensorUploadEnd,
    encode_gguf_header,
    encode_raw_segment,
    encode_ref_segment,
)

PROTOCOL_ID: Final = "/mesh/rpc-tensor/1.0.0"
VERSION: Final = 1
MAX_FRAME: Final = 4096
MAX_FILES: Final = 32
"""32 sha256s in hex take 2112 bytes of CBOR: a hello always fits its 4096-byte frame."""
EXT_GGUF_REF: Final = "gguf-ref"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
REFUSAL_CODES: Final = ("not_worker", "version", "unavailable", "busy")


@dataclass(frozen=True)
class HostHello:
    worker: str
    rpc: tuple[int, int, int] = RPC_PROTO_VERSION
    files: tuple[str, ...] = ()
    ext: tuple[str, ...] = ()
    memory: int = 0
    """Bytes of the worker's memory the host's plan counts on (0: not said)."""

    def to_map(self) -> dict[str, Any]:
        msg: dict[str, Any] = {"t": "hello", "v": VERSION, "worker": self.worker}
        msg["rpc"] = list(self.rpc)
        if self.files:
            msg["files"] = list(self.files)
        if self.ext:
            msg["ext"] = list(self.ext)
        if self.memory:
            msg["memory"] = self.memory
        return msg


@dataclass(frozen=True)
class WorkerHello:
    rpc: tuple[int, int, int] = RPC_PROTO_VERSION
    files: tuple[str, ...] = ()
    ext: tuple[str, ...] = ()

    def to_map(self) -> dict[str, Any]:
        msg: dict[str, Any] = {"t": "hello", "v": VERSION, "rpc": list(self.rpc)}
        if self.files:
            msg["files"] = list(self.files)
        if self.ext:
            msg["ext"] = list(self.ext)
        return msg


@dataclass(frozen=True)
class Refused:
    code: str
    message: str

    def to_map(self) -> dict[str, Any]:
        return {"t": "refused", "code": self.code, "message": self.message}


def _rpc(msg: Mapping[str, Any]) -> tuple[int, int, int]:
    parts = list_field(msg, "rpc", max_len=3, where="hello: ")
    if len(parts) != 3 or not all(
        isinstance(p, int) and not isinstance(p, bool) and 0 <= p < 256 for p in parts
    ):
        raise ProtocolError("hello: rpc must be three numbers 0..255")
    return (parts[0], parts[1], parts[2])


def _files(msg: Mapping[str, Any]) -> tuple[str, ...]:
    if "files" not in msg:
        return ()
    files = list_field(msg, "files", max_len=MAX_FILES, where="hello: ")
    if not all(isinstance(f, str) and _SHA256.match(f) for f in files):
        raise ProtocolError("hello: files must be sha256 digests in lower-case hex")
    return tuple(files)


def _ext(msg: Mapping[str, Any]) -> tuple[str, ...]:
    if "ext" not in msg:
        return ()
    ext = list_field(msg, "ext", max_len=16, where="hello: ")
    if not all(isinstance(e, str) and 0 < len(e) <= 64 for e in ext):
        raise ProtocolError("hello: ext must be names of 1..64 characters")
    return tuple(ext)


def _version(msg: Mapping[str, Any]) -> None:
    if uint_field(msg, "v", where="hello: ") != VERSION:
        raise ProtocolError(f"hello: version {msg.get('v')!r} is not {VERSION}")


def parse_host_hello(msg: Mapping[str, Any]) -> HostHello:
    if message_type(msg) != "hello":
        raise ProtocolError(f"expected a hello, got {message_type(msg)!r}")
    _version(msg)
    worker = text_field(msg, "worker", max_len=128, where="hello: ")
    memory = uint_field(msg, "memory", where="hello: ") if "memory" in msg else 0
    return HostHello(worker, _rpc(msg), _files(msg), _ext(msg), memory)


def parse_worker_reply(msg: Mapping[str, Any]) -> WorkerHello | Refused:
    kind = message_type(msg)
    if kind == "refused":
        code = text_field(msg, "code", max_len=64, where="refused: ")
        message = text_field(msg, "message", max_len=1024, where="refused: ", min_len=0)
        return Refused(code, message)
    if kind != "hello":
        raise ProtocolError(f"expected a hello or refused, got {kind!r}")
    _version(msg)
    return WorkerHello(_rpc(msg), _files(msg), _ext(msg))


def answer_hello(
    hello: HostHello, *, node_id: str, files: Iterable[str], available: bool = True
) -> WorkerHello | Refused:
    """The worker's answer to a host's hello; ``files`` are the sha256s it holds."""
    if hello.worker != node_id:
        return Refused("not_worker", f"this is node {node_id}, not {hello.worker}")
    if hello.rpc != RPC_PROTO_VERSION:
        mine = ".".join(map(str, RPC_PROTO_VERSION))
        return Refused(
            "version",
            f"worker speaks llama.cpp RPC {mine}, the host "
            f"{'.'.join(map(str, hello.rpc))}; run the same meshp2p version on both",
        )
    if not available:
        return Refused("unavailable", "this node lends no memory now")
    held = set(files)
    shared = tuple(f for f in hello.files if f in held)
    ext = (EXT_GGUF_REF,) if shared and EXT_GGUF_REF in hello.ext else ()
    return WorkerHello(RPC_PROTO_VERSION, shared, ext)


# -- byte rewriting -------------------------------------------------------------------------


@dataclass
class RewriteCounters:
    bytes_in: int = 0
    bytes_out: int = 0
    uploads: int = 0
    uploads_by_reference: int = 0
    bytes_by_reference: int = 0
    """Upload bytes the stream carried as references instead of data."""


FileReader = Callable[[bytes, int, int], bytes | memoryview]
"""``read(sha256, offset, length)``: that region of a local file with this SHA-256."""


@dataclass(frozen=True)
class _Region:
    sha256: bytes
    offset: int
    n_bytes: int


class HostRewriter:
    """llama.cpp client bytes in, ``/mesh/rpc-tensor`` stream bytes out (host side).

    ``layouts`` maps the SHA-256 (hex) of each GGUF file the worker agreed to read to its
    layout; ``read`` gives the host's own copy of a region of such a file. With no
    layouts it only checks the stream and zeroes the HELLO's ``conn_caps``.
    """

    def __init__(
        self,
        layouts: Mapping[str, GgufLayout],
        read: FileReader,
        counters: RewriteCounters | None = None,
    ) -> None:
        self._parser = RpcRequestParser()
        self._read = read
        self._index: dict[str, _Region] = {}
        for sha_hex, layout in layouts.items():
            sha = bytes.fromhex(sha_hex)
            for t in layout.tensors:
                self._index.setdefault(t.name, _Region(sha, t.offset, t.n_bytes))
        self._upload: _Region | None = None  # the file region the current upload may match
        self._position = 0  # where in the file its next byte would be
        self._ref_start = 0
        self._ref_length = 0
        #: Shared by every rewriter of one tunnel when given, so it adds up their work.
        self.counters = counters if counters is not None else RewriteCounters()

    def feed(self, data: bytes | bytearray | memoryview) -> list[bytes | memoryview]:
        """What to write to the stream for ``data``; ProtocolError on a malformed stream."""
        self.counters.bytes_in += len(data)
        out: list[bytes | memoryview] = []
        for event in self._parser.feed(data):
            if isinstance(event, TensorData):
                if self._upload is None:
                    out.append(event.data)
                else:
                    self._match(event.data, out)
            elif isinstance(event, Request):
                out.append(event.wire)
            elif isinstance(event, TensorUpload):
                self._start_upload(event, out)
            elif isinstance(event, TensorUploadEnd):
                if self._upload is not None:
                    self._flush_ref(out)
                    self._upload = None
            elif isinstance(event, Hello):
                out.append(Hello(bytes(CONN_CAPS_SIZE)).wire)
        self.counters.bytes_out += sum(len(chunk) for chunk in out)
        return out

    def end_of_stream(self) -> None:
        self._parser.end_of_stream()

    def _start_upload(self, upload: TensorUpload, out: list[bytes | memoryview]) -> None:
        self.counters.uploads += 1
        region = self._index.get(upload.tensor.name)
        if (
            region is None
            or upload.data_length == 0
            or upload.offset + upload.data_length > region.n_bytes
        ):
            out.append(upload.wire_prefix)
            return
        self.counters.uploads_by_reference += 1
        out.append(encode_gguf_header(upload))
        self._upload = region
        self._position = region.offset + upload.offset
        self._ref_start = self._position
        self._ref_length = 0

    def _match(self, data: memoryview, out: list[bytes | memoryview]) -> None:
        assert self._upload is not None
        length = len(data)
        # bytes on both sides: comparing memoryviews goes item by item, 60x slower.
        if bytes(self._read(self._upload.sha256, self._position, length)) == bytes(data):
            if not self._ref_length:
                self._ref_start = self._position
            self._ref_length += length
        else:
            self._flush_ref(out)
            for start in range(0, length, MAX_RAW_SEGMENT):
                out.append(encode_raw_segment(data[start : start + MAX_RAW_SEGMENT]))
        self._position += length

    def _flush_ref(self, out: list[bytes | memoryview]) -> None:
        if self._ref_length and self._upload is not None:
            out.append(encode_ref_segment(self._upload.sha256, self._ref_start, self._ref_length))
            self.counters.bytes_by_reference += self._ref_length
            self._ref_length = 0


class WorkerRewriter:
    """Stream bytes in, llama.cpp client bytes for the local RPC server out (worker side).

    ``files`` maps the SHA-256 (raw bytes) of each file the worker offered in its hello to
    its size; ``read`` gives a region of the worker's copy. Without files, SET_TENSOR_GGUF
    is refused like any unknown command.
    """

    def __init__(self, files: Mapping[bytes, int], read: FileReader) -> None:
        self._parser = RpcRequestParser(gguf_files=dict(files) if files else None)
        self._read = read
        self.counters = RewriteCounters()

    def feed(self, data: bytes | bytearray | memoryview) -> list[bytes | memoryview]:
        self.counters.bytes_in += len(data)
        out: list[bytes | memoryview] = []
        for event in self._parser.feed(data):
            if isinstance(event, TensorData):
                out.append(event.data)
            elif isinstance(event, FileRegion):
                out.append(self._read(event.sha256, event.offset, event.length))
                self.counters.bytes_by_reference += event.length
            elif isinstance(event, TensorUpload):
                self.counters.uploads += 1
                out.append(event.wire_prefix)
            elif isinstance(event, Request):
                out.append(event.wire)
            elif isinstance(event, Hello):
                out.append(Hello(bytes(CONN_CAPS_SIZE)).wire)
        self.counters.bytes_out += sum(len(chunk) for chunk in out)
        return out

    def end_of_stream(self) -> None:
        self._parser.end_of_stream()


_HELLO_RESPONSE_SIZE: Final = 8 + 4 + CONN_CAPS_SIZE
MAX_HELD_RESPONSE: Final = 256 * 1024


@dataclass
class ResponseFilter:
    """The server's answers, regrouped into whole responses, HELLO's ``conn_caps`` zeroed.

    Every server message is ``| size u64 | payload |``, and the server writes the size
    and the payload separately: forwarding each piece as it comes would cost a stream
    frame and a wake-up of the host each. ``feed`` returns whole responses (the first
    answers HELLO: size 28, the version triple, a pad byte, then 24 bytes of
    ``conn_caps``, zeroed here); a response larger than 256 KiB is passed on in pieces
    as it arrives, so memory stays bounded. ``pending`` bytes wait for the rest of
    their response.
    """

    _first: bool = True
    _held: bytearray = field(default_factory=bytearray)
    _left: int = 0
    """Payload bytes of the current response not yet seen (0: at a size field)."""
    _streaming: bool = False

    @property
    def pending(self) -> int:
        return len(self._held)

    def feed(self, data: bytes | memoryview) -> list[bytes]:
        out: list[bytes] = []
        view = memoryview(data)
        while len(view):
            if self._left == 0 and not self._streaming:
                take = min(8 - len(self._held), len(view))
                self._held += view[:take]
                view = view[take:]
                if len(self._held) < 8:
                    break
                self._left = int.from_bytes(self._held[:8], "little")
                if self._left == 0:
                    out.append(bytes(self._held))
                    self._held.clear()
                continue
            take = min(self._left, len(view))
            self._held += view[:take]
            view = view[take:]
            self._left -= take
            if self._first and self._left == 0 and len(self._held) == _HELLO_RESPONSE_SIZE:
                self._held[12:] = bytes(CONN_CAPS_SIZE)
            if self._left == 0:
                self._first = False
                self._streaming = False
                out.append(bytes(self._held))
                self._held.clear()
            elif len(self._held) >= MAX_HELD_RESPONSE and not self._first:
                self._streaming = True
                out.append(bytes(self._held))
                self._held.clear()
        return out
