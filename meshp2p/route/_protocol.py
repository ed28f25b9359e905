"""/mesh/route/1.0.0 core: forward one OpenAI API request to a node that serves its model, or
fetch a node's routing table; one exchange per stream.

Sans-I/O: message types, their frames and limits, and one state machine per side of an
exchange (RouteServerExchange, RouteClientExchange); see protocols/route.md.

One module (about 700 lines), as protocols/route.md is one document: each message's
limits are checked where it is parsed and where the state machines send it.
"""

from __future__ import annotations

import enum
import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

from .._errors import ProtocolError
from ..api._resume import MAX_ANSWER_ID_LEN, MAX_RESUME_TOKENS, Resume
from ..transport._wire import (
    TYPE_KEY,
    bytes_field,
    encode_cbor,
    encode_varint,
    list_field,
    map_field,
    message_type,
    text_field,
    uint_field,
)

PROTOCOL_ID = "/mesh/route/1.0.0"
ROUTE_VERSION = 1
"""The request format in use (key ``v``); any other is answered unavailable/``version``."""

MAX_BODY = 8 * 2**20 + 64 * 2**10
"""A request body: the gateway's 8 MiB limit on a client's JSON, plus room for re-encoding."""
MAX_REQUEST_FRAME = MAX_BODY + 4 * 2**10
"""The request frame carries a whole body, so it alone may be this large."""
MAX_FRAME = 128 * 2**10
"""Every other frame: answers arrive in chunks, so none needs more."""
MAX_TABLE_FRAME = 2**20
"""A routing table: 1024 hosts at a few hundred bytes each do not fit MAX_FRAME."""
MAX_DATA = 64 * 2**10
"""Bytes of answer body in one ``data`` frame."""

MAX_REQUEST_ID_LEN = 64
MAX_ENDPOINT_LEN = 32
MAX_HEADERS = 32
MAX_HEADER_NAME_LEN = 64
MAX_HEADER_VALUE_LEN = 1024
MAX_CODE_LEN = 64
MAX_MESSAGE_LEN = 1024
MAX_HOSTS = 1024
MAX_NODE_ID_LEN = 128
MAX_HOST_ADDRS = 32
MAX_ADDR_LEN = 256
MAX_HOST_MODELS = 64
MAX_MODEL_ID_LEN = 256
MIN_STATUS = 200
"""A head carries the final status: 1xx answers are the server's HTTP stack's business."""
MAX_STATUS = 599

ENDPOINTS = ("chat", "completion", "responses", "messages", "count_tokens", "embeddings")
"""``chat`` is /v1/chat/completions, ``completion`` /v1/completions, ``responses``
/v1/responses, ``messages`` /v1/messages, ``count_tokens`` /v1/messages/count_tokens,
``embeddings`` /v1/embeddings."""

UNAVAILABLE_CODES = ("not_served", "busy", "worker_down", "shutting_down", "unsupported", "version")
"""Codes senders use in ``unavailable``; receivers accept any code (a newer peer may add more)."""
ERROR_CODES = ("worker_failed", "timeout", "internal")
"""Codes senders use in ``error``; receivers accept any code."""

HOP_BY_HOP_HEADERS = frozenset(
    (
        "connection",
        "content-length",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    )
)
"""Headers about one HTTP connection's framing: servers do not send them, clients drop them."""

TABLE_VERSION_DOMAIN = b"meshp2p/route/v1 table\x00"

# RFC 9110 tokens, lower-cased; values are visible ASCII, space and tab, so a client copying
# a head into its own HTTP answer can never be made to split it (no CR, LF or NUL).
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9a-z]+")
_HEADER_VALUE = re.compile(r"[\t\x20-\x7e]*")
# A request id ends up in log lines: visible ASCII only, so it cannot forge one.
_REQUEST_ID = re.compile(r"[\x21-\x7e]+")


# Client → server.


@dataclass(frozen=True)
class RouteRequest:
    """Forward one OpenAI API request; ``body`` is the client's OpenAI JSON, which the
    server validates again."""

    request_id: str
    endpoint: str
    body: bytes
    v: int = ROUTE_VERSION
    progress: bool = False
    """Ask for progress comments in the answer (chat and completion), so that the
    requester can resume it on another host if this one breaks off."""
    resume: Resume | None = None
    """Go on with an answer another host broke off: the tokens whose events the client
    has, and the answer's id and creation time."""

    def to_map(self) -> dict[str, Any]:
        m: dict[str, Any] = {
            TYPE_KEY: "request",
            "v": self.v,
            "id": self.request_id,
            "endpoint": self.endpoint,
            "body": self.body,
        }
        if self.progress:
            m["progress"] = True
        if self.resume is not None:
            m["resume"] = self.resume.to_json()
        return m


@dataclass(frozen=True)
class TableRequest:
    """Ask for the routing table; ``since`` is the version the client holds (0: none)."""

    since: int = 0
    v: int = ROUTE_VERSION

    def to_map(self) -> dict[str, Any]:
        return {TYPE_KEY: "table", "v": self.v, "since": self.since}


# Server → client.


@dataclass(frozen=True)
class ResponseHead:
    """The answer's final HTTP status and headers (lower-case names); body bytes follow."""

    status: int
    headers: Mapping[str, str]

    def __hash__(self) -> int:
        return hash((self.status, tuple(sorted(self.headers.items()))))

    def to_map(self) -> dict[str, Any]:
        return {TYPE_KEY: "head", "status": self.status, "headers": dict(self.headers)}


@dataclass(frozen=True)
class ResponseData:
    """The next 1..MAX_DATA bytes of the answer's body."""

    data: bytes

    def to_map(self) -> dict[str, Any]:
        return {TYPE_KEY: "data", "data": self.data}


@dataclass(frozen=True)
class ResponseEnd:
    """The answer's body is complete."""

    def to_map(self) -> dict[str, Any]:
        return {TYPE_KEY: "end"}


@dataclass(frozen=True)
class Unavailable:
    """Before any head: this node cannot take the request; the client may try another host."""

    code: str
    message: str = ""

    def to_map(self) -> dict[str, Any]:
        return {TYPE_KEY: "unavailable", "code": self.code, "message": self.message}


@dataclass(frozen=True)
class RouteError:
    """After a head: the answer broke off; the client must not retry elsewhere."""

    code: str
    message: str = ""

    def to_map(self) -> dict[str, Any]:
        return {TYPE_KEY: "error", "code": self.code, "message": self.message}


@dataclass(frozen=True)
class HostEntry:
    """One node that serves models, as a routing table lists it."""

    node_id: str
    addrs: tuple[str, ...]
    models: tuple[str, ...]
    inflight: int

    def to_map(self) -> dict[str, Any]:
        return {
            "node_id": self.node_id,
            "addrs": list(self.addrs),
            "models": list(self.models),
            "inflight": self.inflight,
        }


@dataclass(frozen=True)
class RoutingTable:
    """The hosts a node knows, in its order of preference; ``version`` names this content."""

    version: int
    hosts: tuple[HostEntry, ...]

    def to_map(self) -> dict[str, Any]:
        return {
            TYPE_KEY: "table",
            "version": self.version,
            "hosts": [host.to_map() for host in self.hosts],
        }


@dataclass(frozen=True)
class TableUnchanged:
    """The table the client holds (``since``) is still current."""

    version: int

    def to_map(self) -> dict[str, Any]:
        return {TYPE_KEY: "unchanged", "version": self.version}


ClientMessage = RouteRequest | TableRequest
ServerMessage = (
    ResponseHead
    | ResponseData
    | ResponseEnd
    | Unavailable
    | RouteError
    | RoutingTable
    | TableUnchanged
)
RouteMessage = ClientMessage | ServerMessage


def parse_client_message(m: Mapping[str, Any]) -> ClientMessage | None:
    """Turn a decoded client map into a message; None for a type this version does not know
    (the server answers unavailable/``unsupported``). Unknown keys are ignored.

    Raises ProtocolError for a known type with missing, mistyped or over-limit fields.
    ``v`` and ``endpoint`` are not judged here: a value this version does not serve is
    refused with ``unavailable`` by RouteServerExchange, not by resetting the stream.
    """
    if not isinstance(m, Mapping):
        raise ProtocolError("a route message must be a map")
    kind = message_type(m)
    if kind == "request":
        request_id = text_field(m, "id", max_len=MAX_REQUEST_ID_LEN)
        if not _REQUEST_ID.fullmatch(request_id):
            raise ProtocolError("field 'id' must be visible ASCII characters")
        progress = m.get("progress", False)
        if not isinstance(progress, bool):
            raise ProtocolError("field 'progress' must be a boolean")
        return RouteRequest(
            request_id=request_id,
            endpoint=text_field(m, "endpoint", max_len=MAX_ENDPOINT_LEN),
            body=bytes_field(m, "body", max_len=MAX_BODY),
            v=uint_field(m, "v"),
            progress=progress,
            resume=_resume(m["resume"]) if "resume" in m else None,
        )
    if kind == "table":
        return TableRequest(since=uint_field(m, "since"), v=uint_field(m, "v"))
    return None


def parse_server_message(m: Mapping[str, Any]) -> ServerMessage:
    """Turn a decoded server map into a message; raise ProtocolError for anything malformed,
    including an unknown type (a server only sends the types of the client's ``v``)."""
    if not isinstance(m, Mapping):
        raise ProtocolError("a route message must be a map")
    kind = message_type(m)
    if kind == "head":
        status = uint_field(m, "status")
        if not MIN_STATUS <= status <= MAX_STATUS:
            raise ProtocolError(f"field 'status' must be {MIN_STATUS}..{MAX_STATUS}")
        headers = map_field(m, "headers", max_len=MAX_HEADERS)
        return ResponseHead(status, {_header_name(k): _header_value(v) for k, v in headers.items()})
    if kind == "data":
        return ResponseData(bytes_field(m, "data", max_len=MAX_DATA))
    if kind == "end":
        return ResponseEnd()
    if kind == "unavailable":
        return Unavailable(*_code_and_message(m))
    if kind == "error":
        return RouteError(*_code_and_message(m))
    if kind == "table":
        hosts = list_field(m, "hosts", max_len=MAX_HOSTS)
        return RoutingTable(_table_version(m), tuple(_host_entry(h) for h in hosts))
    if kind == "unchanged":
        return TableUnchanged(_table_version(m))
    raise ProtocolError(f"unknown route answer type {kind!r}")


def _resume(r: Any) -> Resume:
    where = "resume "
    if not isinstance(r, Mapping):
        raise ProtocolError("field 'resume' must be a map")
    tokens = list_field(r, "tokens", max_len=MAX_RESUME_TOKENS, where=where)
    if not tokens:
        raise ProtocolError("resume field 'tokens' must not be empty")
    if any(isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < 2**32 for t in tokens):
        raise ProtocolError("resume field 'tokens' must hold token ids (0..2^32-1)")
    return Resume(
        tuple(tokens),
        text_field(r, "id", max_len=MAX_ANSWER_ID_LEN, where=where),
        uint_field(r, "created", where=where),
    )


def _header_name(name: Any) -> str:
    if (
        not isinstance(name, str)
        or len(name) > MAX_HEADER_NAME_LEN
        or not _HEADER_NAME.fullmatch(name)
    ):
        raise ProtocolError(
            f"header names must be 1..{MAX_HEADER_NAME_LEN} lower-case HTTP token characters"
        )
    return name


def _header_value(value: Any) -> str:
    if (
        not isinstance(value, str)
        or len(value) > MAX_HEADER_VALUE_LEN
        or not _HEADER_VALUE.fullmatch(value)
    ):
        raise ProtocolError(
            f"header values must be 0..{MAX_HEADER_VALUE_LEN} visible ASCII characters"
        )
    return value


def _code_and_message(m: Mapping[str, Any]) -> tuple[str, str]:
    return (
        text_field(m, "code", max_len=MAX_CODE_LEN),
        text_field(m, "message", max_len=MAX_MESSAGE_LEN, min_len=0),
    )


def _table_version(m: Mapping[str, Any]) -> int:
    version = uint_field(m, "version")
    if version == 0:
        raise ProtocolError("field 'version' must not be 0 (0 means 'no table')")
    return version


def _host_entry(h: Any) -> HostEntry:
    where = "host "
    if not isinstance(h, Mapping):
        raise ProtocolError("each of 'hosts' must be a map")
    addrs = list_field(h, "addrs", max_len=MAX_HOST_ADDRS, where=where)
    models = list_field(h, "models", max_len=MAX_HOST_MODELS, where=where)
    return HostEntry(
        node_id=text_field(h, "node_id", max_len=MAX_NODE_ID_LEN, where=where),
        addrs=tuple(_text_item(a, "addrs", MAX_ADDR_LEN) for a in addrs),
        models=tuple(_text_item(a, "models", MAX_MODEL_ID_LEN) for a in models),
        inflight=uint_field(h, "inflight", where=where),
    )


def _text_item(value: Any, name: str, max_len: int) -> str:
    if not isinstance(value, str) or not 1 <= len(value) <= max_len:
        raise ProtocolError(
            f"host field {name!r} holds an item that is not 1..{max_len} characters of text"
        )
    return value


def max_frame_of(msg: RouteMessage) -> int:
    """The frame limit a receiver applies to ``msg``'s frame."""
    if isinstance(msg, RouteRequest):
        return MAX_REQUEST_FRAME
    if isinstance(msg, RoutingTable):
        return MAX_TABLE_FRAME
    return MAX_FRAME


def encode(msg: RouteMessage) -> bytes:
    """The frame for ``msg``. ValueError if a receiver would refuse it: a field over its
    limit, or a frame over its limit (max_frame_of)."""
    m = msg.to_map()
    try:
        if isinstance(msg, RouteRequest | TableRequest):
            parse_client_message(m)
        else:
            parse_server_message(m)
    except ProtocolError as exc:
        raise ValueError(f"a receiver would refuse this {m[TYPE_KEY]!r}: {exc}") from None
    body = encode_cbor(m)
    limit = max_frame_of(msg)
    if len(body) > limit:
        raise ValueError(
            f"route {m[TYPE_KEY]!r} message is {len(body)} bytes, over the {limit}-byte limit"
        )
    return encode_varint(len(body)) + body


def split_body(data: bytes) -> list[ResponseData]:
    """The ``data`` messages that carry ``data`` in order (none for an empty body)."""
    return [ResponseData(data[i : i + MAX_DATA]) for i in range(0, len(data), MAX_DATA)]


def table_version(hosts: Sequence[HostEntry]) -> int:
    """The version of a table listing ``hosts``: a 53-bit digest of its content, never 0.

    A digest rather than a counter, so a version means the same table on every node and
    across restarts, and a client asking another node ``since`` it is never misled.
    53 bits, so JSON and JavaScript numbers hold it exactly.
    """
    payload = TABLE_VERSION_DOMAIN + encode_cbor([host.to_map() for host in hosts])
    digest = int.from_bytes(hashlib.sha256(payload).digest()[:8], "big")
    return (digest >> 11) or 1


# Room for the table map itself: its keys, "table", a 64-bit version and the array header.
_TABLE_OVERHEAD = 64


def make_table(hosts: Iterable[HostEntry], *, max_frame: int = MAX_TABLE_FRAME) -> RoutingTable:
    """A table of ``hosts`` (in the caller's order of preference) cut to what one frame holds:
    the longest prefix of at most MAX_HOSTS hosts whose frame fits ``max_frame``.

    ValueError if a host breaks a per-host limit (a receiver would refuse the table).
    """
    kept: list[HostEntry] = []
    size = _TABLE_OVERHEAD
    for host in hosts:
        if len(kept) == MAX_HOSTS:
            break
        m = host.to_map()
        size += len(encode_cbor(m))
        if size > max_frame:
            break
        try:
            _host_entry(m)
        except ProtocolError as exc:
            raise ValueError(f"host {host.node_id!r}: {exc}") from None
        kept.append(host)
    return RoutingTable(table_version(kept), tuple(kept))


def answer_table(table: RoutingTable, since: int) -> RoutingTable | TableUnchanged:
    """What a server sends a client that holds version ``since``."""
    return TableUnchanged(table.version) if since == table.version else table


# State machines.


class ServerState(enum.Enum):
    AWAITING_REQUEST = "awaiting_request"
    REFUSING = "refusing"
    """A request this version does not serve arrived; next to send: the unavailable."""
    REQUEST = "request"
    """A forwarded request arrived; next to send: head or unavailable."""
    TABLE = "table"
    """A table request arrived; next to send: table, unchanged or unavailable."""
    STREAMING = "streaming"
    """Head sent; next to send: data, end or error."""
    DONE = "done"
    FAILED = "failed"
    """The client broke the protocol (``reason``); reset the stream."""


_SERVER_SENDS: dict[ServerState, dict[type[ServerMessage], ServerState]] = {
    ServerState.REFUSING: {Unavailable: ServerState.DONE},
    ServerState.REQUEST: {ResponseHead: ServerState.STREAMING, Unavailable: ServerState.DONE},
    ServerState.TABLE: {
        RoutingTable: ServerState.DONE,
        TableUnchanged: ServerState.DONE,
        Unavailable: ServerState.DONE,
    },
    ServerState.STREAMING: {
        ResponseData: ServerState.STREAMING,
        ResponseEnd: ServerState.DONE,
        RouteError: ServerState.DONE,
    },
}


class RouteServerExchange:
    """The accepting side of one stream: takes exactly one request, checks what it sends.

    Feed it decoded frames (``receive``) and the end of the client's writes
    (``end_of_stream``); get the frames to write from ``send``. Peer input only ever
    raises ProtocolError (reset the stream); a driver bug raises RuntimeError.
    """

    max_frame = MAX_REQUEST_FRAME
    """The limit for the FrameDecoder reading the client's side."""

    def __init__(self) -> None:
        self.state = ServerState.AWAITING_REQUEST
        self.request: ClientMessage | None = None
        """The request received (a refused one too, unless its type was unknown)."""
        self.reason: str | None = None
        """Why the exchange failed, in one line; None unless state is FAILED."""

    def receive(self, msg: Mapping[str, Any] | ClientMessage) -> ClientMessage | Unavailable:
        """Take the client's one message.

        Returns the request to answer, or an Unavailable to ``send`` at once for one this
        version does not serve (unknown type, ``v`` or endpoint).
        """
        if self.state is not ServerState.AWAITING_REQUEST:
            self._fail("the client sent a second message; one request per stream")
        if isinstance(msg, RouteRequest | TableRequest):
            request: ClientMessage = msg
        else:
            try:
                parsed = parse_client_message(msg)
            except ProtocolError as exc:
                self._fail(str(exc))
            if parsed is None:
                kind = message_type(msg)[:MAX_ENDPOINT_LEN]
                return self._refuse("unsupported", f"unknown request type {kind!r}")
            request = parsed
        self.request = request
        if request.v != ROUTE_VERSION:
            return self._refuse(
                "version", f"request version {request.v}; this node speaks {ROUTE_VERSION}"
            )
        if isinstance(request, TableRequest):
            self.state = ServerState.TABLE
            return request
        if request.endpoint not in ENDPOINTS:
            return self._refuse(
                "unsupported", f"endpoint {request.endpoint!r}; served: {', '.join(ENDPOINTS)}"
            )
        self.state = ServerState.REQUEST
        return request

    def end_of_stream(self) -> None:
        """The client closed its side: normal after its request, ProtocolError before it."""
        if self.state is ServerState.AWAITING_REQUEST:
            self._fail("the client closed the stream without a request")

    def send(self, msg: ServerMessage) -> bytes:
        """The frame for ``msg``; RuntimeError if ``msg`` may not come next."""
        next_state = _SERVER_SENDS.get(self.state, {}).get(type(msg))
        if next_state is None:
            raise RuntimeError(f"cannot send {type(msg).__name__} in state {self.state.value}")
        if isinstance(msg, TableUnchanged):
            assert isinstance(self.request, TableRequest)
            if msg.version != self.request.since:
                raise RuntimeError("'unchanged' must name the version the client holds")
        frame = encode(msg)
        self.state = next_state
        return frame

    def _refuse(self, code: str, message: str) -> Unavailable:
        self.state = ServerState.REFUSING
        return Unavailable(code, message)

    def _fail(self, reason: str) -> NoReturn:
        if self.state is not ServerState.FAILED:
            self.state = ServerState.FAILED
            self.reason = reason
        raise ProtocolError(self.reason or reason)


class ClientState(enum.Enum):
    IDLE = "idle"
    AWAITING_ANSWER = "awaiting_answer"
    STREAMING = "streaming"
    """Head received; data, end or error come next."""
    DONE = "done"
    """The answer is complete: end, table or unchanged received."""
    UNAVAILABLE = "unavailable"
    """The server could not take the request; try another host."""
    FAILED = "failed"
    """An error after the head, or the server broke the protocol (``reason``)."""


_REQUEST_ANSWERS: dict[ClientState, dict[type[ServerMessage], ClientState]] = {
    ClientState.AWAITING_ANSWER: {
        ResponseHead: ClientState.STREAMING,
        Unavailable: ClientState.UNAVAILABLE,
    },
    ClientState.STREAMING: {
        ResponseData: ClientState.STREAMING,
        ResponseEnd: ClientState.DONE,
        RouteError: ClientState.FAILED,
    },
}
_TABLE_ANSWERS: dict[ClientState, dict[type[ServerMessage], ClientState]] = {
    ClientState.AWAITING_ANSWER: {
        RoutingTable: ClientState.DONE,
        TableUnchanged: ClientState.DONE,
        Unavailable: ClientState.UNAVAILABLE,
    },
}


class RouteClientExchange:
    """The opening side of one stream: sends one request and checks the order of the answer.

    ``start`` gives the request frame; feed each decoded frame of the answer to
    ``receive`` and the end of the server's writes to ``end_of_stream``. Peer input only
    ever raises ProtocolError (reset the stream); ``retryable`` then says whether the
    request may go to another host.
    """

    def __init__(self, request: ClientMessage) -> None:
        self.request = request
        self.state = ClientState.IDLE
        self.head: ResponseHead | None = None
        self.table: RoutingTable | None = None
        """The table received; None after 'unchanged' (the client's own is current)."""
        self.outcome: Unavailable | RouteError | None = None
        """What the server said went wrong, if it did."""
        self.reason: str | None = None
        """Why the exchange failed, in one line; None unless it failed."""
        table = isinstance(request, TableRequest)
        self._answers = _TABLE_ANSWERS if table else _REQUEST_ANSWERS

    @property
    def max_frame(self) -> int:
        """The limit for the FrameDecoder reading the server's side."""
        return MAX_TABLE_FRAME if isinstance(self.request, TableRequest) else MAX_FRAME

    @property
    def finished(self) -> bool:
        """Nothing more may arrive: the answer is complete, refused or broken off."""
        return self.state in (ClientState.DONE, ClientState.UNAVAILABLE, ClientState.FAILED)

    @property
    def failed(self) -> bool:
        return self.state in (ClientState.UNAVAILABLE, ClientState.FAILED)

    @property
    def retryable(self) -> bool:
        """Whether sending the request to another host is safe: always for a table request,
        and for a forwarded request until a head arrived (nothing reached the caller)."""
        return isinstance(self.request, TableRequest) or self.head is None

    def start(self) -> bytes:
        """The request frame to write (after which the client may close its side)."""
        if self.state is not ClientState.IDLE:
            raise RuntimeError(f"exchange already started (state {self.state.value})")
        frame = encode(self.request)
        self.state = ClientState.AWAITING_ANSWER
        return frame

    def receive(self, msg: Mapping[str, Any] | ServerMessage) -> ServerMessage:
        """Check the next message of the answer and return it parsed."""
        if self.state is ClientState.IDLE:
            raise RuntimeError("receive before start")
        if self.finished:
            self._fail(f"the server sent a message after the answer ended ({self.state.value})")
        if isinstance(msg, _SERVER_TYPES):
            parsed: ServerMessage = msg
        else:
            try:
                parsed = parse_server_message(msg)
            except ProtocolError as exc:
                self._fail(str(exc))
        next_state = self._answers.get(self.state, {}).get(type(parsed))
        if next_state is None:
            self._fail(f"unexpected {type(parsed).__name__} in state {self.state.value}")
        if isinstance(parsed, TableUnchanged):
            assert isinstance(self.request, TableRequest)
            if parsed.version != self.request.since:
                self._fail(
                    f"'unchanged' names version {parsed.version}, "
                    f"the client holds {self.request.since}"
                )
        elif isinstance(parsed, ResponseHead):
            self.head = parsed
        elif isinstance(parsed, RoutingTable):
            self.table = parsed
        elif isinstance(parsed, Unavailable | RouteError):
            self.outcome = parsed
            self.reason = f"{parsed.to_map()[TYPE_KEY]} {parsed.code}: {parsed.message}"
        self.state = next_state
        return parsed

    def end_of_stream(self) -> None:
        """The server closed its side: ProtocolError unless the answer was finished."""
        if self.state is ClientState.IDLE:
            raise RuntimeError("end_of_stream before start")
        if not self.finished:
            self._fail(f"the stream ended in state {self.state.value}")

    def _fail(self, reason: str) -> NoReturn:
        self.state = ClientState.FAILED
        # Keep the first cause: what came after it is only its consequence.
        self.reason = self.reason or reason
        raise ProtocolError(reason)


_SERVER_TYPES = (
    ResponseHead,
    ResponseData,
    ResponseEnd,
    Unavailable,
    RouteError,
    RoutingTable,
    TableUnchanged,
)
