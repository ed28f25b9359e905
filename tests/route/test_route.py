"""/mesh/route/1.0.0: messages, limits, and the order both sides of an exchange enforce."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshp2p._errors import ProtocolError
from meshp2p.route._protocol import (
    MAX_BODY,
    MAX_DATA,
    MAX_FRAME,
    MAX_HEADERS,
    MAX_HOST_ADDRS,
    MAX_HOST_MODELS,
    MAX_HOSTS,
    MAX_REQUEST_FRAME,
    MAX_TABLE_FRAME,
    ClientState,
    HostEntry,
    ResponseData,
    ResponseEnd,
    ResponseHead,
    RouteClientExchange,
    RouteError,
    RouteMessage,
    RouteRequest,
    RouteServerExchange,
    RoutingTable,
    ServerMessage,
    ServerState,
    TableRequest,
    TableUnchanged,
    Unavailable,
    answer_table,
    encode,
    make_table,
    max_frame_of,
    parse_client_message,
    parse_server_message,
    split_body,
    table_version,
)
from meshp2p.transport._wire import FrameDecoder, encode_frame

NODE = "12D3KooWFuQE9V1Y6D14gRTpSEtBdeFewJytDdoBDgSnEKWVCEfZ"
BODY = b'{"model":"m","messages":[{"role":"user","content":"Hi"}]}'
REQUEST = RouteRequest("req-1", "chat", BODY)
HEAD = ResponseHead(200, {"content-type": "application/json"})
HOST = HostEntry(NODE, ("/ip4/192.0.2.1/tcp/4001",), ("m",), 3)
TABLE = make_table([HOST])

MESSAGES: list[RouteMessage] = [
    REQUEST,
    RouteRequest("r" * 64, "completion", b"x" * 1000),
    TableRequest(),
    TableRequest(since=2**53),
    HEAD,
    ResponseHead(503, {}),
    ResponseData(b"\x00" * MAX_DATA),
    ResponseEnd(),
    Unavailable("not_served", "model 'm' is not served here"),
    Unavailable("busy"),
    RouteError("worker_failed", ""),
    TABLE,
    make_table([]),
    TableUnchanged(TABLE.version),
]


def parse(m: dict[str, Any], client_side: bool) -> RouteMessage:
    if client_side:
        msg = parse_client_message(m)
        assert msg is not None
        return msg
    return parse_server_message(m)


def through_the_wire(msg: RouteMessage) -> RouteMessage:
    (decoded,) = FrameDecoder(max_frame_of(msg)).feed(encode(msg))
    return parse(decoded, isinstance(msg, RouteRequest | TableRequest))


# Messages.


@pytest.mark.parametrize("msg", MESSAGES, ids=lambda m: type(m).__name__)
def test_every_message_survives_the_wire(msg: RouteMessage) -> None:
    assert through_the_wire(msg) == msg


@pytest.mark.parametrize("msg", MESSAGES, ids=lambda m: type(m).__name__)
def test_unknown_keys_are_ignored(msg: RouteMessage) -> None:
    m = {**msg.to_map(), "from_the_future": [1, {"x": b"y"}]}
    assert parse(m, isinstance(msg, RouteRequest | TableRequest)) == msg


def test_an_unknown_request_type_parses_as_none_and_an_unknown_answer_type_is_refused() -> None:
    assert parse_client_message({"t": "embed", "v": 1}) is None
    with pytest.raises(ProtocolError, match="unknown route answer type"):
        parse_server_message({"t": "trailer"})


def test_both_sides_say_table_and_mean_different_messages() -> None:
    assert parse_client_message(TableRequest(5).to_map()) == TableRequest(5)
    assert parse_server_message(TABLE.to_map()) == TABLE
    with pytest.raises(ProtocolError):
        parse_server_message(TableRequest(5).to_map())


def bad(msg: RouteMessage, **changes: Any) -> dict[str, Any]:
    m = msg.to_map()
    for key, value in changes.items():
        if value is None:
            del m[key]
        else:
            m[key] = value
    return m


CLIENT_REFUSED = {
    "no id": bad(REQUEST, id=None),
    "empty id": bad(REQUEST, id=""),
    "id too long": bad(REQUEST, id="r" * 65),
    "id with a space": bad(REQUEST, id="req 1"),
    "id with a newline": bad(REQUEST, id="req\n1"),
    "id not text": bad(REQUEST, id=b"req"),
    "no endpoint": bad(REQUEST, endpoint=None),
    "endpoint too long": bad(REQUEST, endpoint="c" * 33),
    "body as text": bad(REQUEST, body="{}"),
    "empty body": bad(REQUEST, body=b""),
    "no v": bad(REQUEST, v=None),
    "negative v": bad(REQUEST, v=-1),
    "v as a bool": bad(REQUEST, v=True),
    "table: no since": bad(TableRequest(), since=None),
    "table: since as float": bad(TableRequest(), since=1.5),
    "no type": {"v": 1},
    "empty type": {"t": ""},
}


@pytest.mark.parametrize("m", CLIENT_REFUSED.values(), ids=CLIENT_REFUSED.keys())
def test_a_malformed_client_message_is_a_protocol_error(m: dict[str, Any]) -> None:
    with pytest.raises(ProtocolError):
        parse_client_message(m)


def test_a_body_over_max_body_is_refused_and_one_at_it_fits_the_request_frame() -> None:
    biggest = RouteRequest("r" * 64, "completion", b"x" * MAX_BODY)
    frame = encode(biggest)
    assert MAX_FRAME < len(frame) <= MAX_REQUEST_FRAME + 9
    (decoded,) = FrameDecoder(MAX_REQUEST_FRAME).feed(frame)
    assert parse_client_message(decoded) == biggest
    with pytest.raises(ProtocolError, match="'body'"):
        parse_client_message({**decoded, "body": decoded["body"] + b"x"})
    with pytest.raises(ValueError):
        encode(RouteRequest("r", "chat", b"x" * (MAX_BODY + 1)))
    # A response reader never accepts a frame that large.
    with pytest.raises(ProtocolError, match="limit"):
        FrameDecoder(MAX_FRAME).feed(frame[:4])


def host_map(**changes: Any) -> dict[str, Any]:
    return {**HOST.to_map(), **changes}


SERVER_REFUSED = {
    "status 199": bad(HEAD, status=199),
    "status 100": bad(HEAD, status=100),
    "status 600": bad(HEAD, status=600),
    "status as text": bad(HEAD, status="200"),
    "no headers": bad(HEAD, headers=None),
    "headers as a list": bad(HEAD, headers=[["a", "b"]]),
    "upper-case header name": bad(HEAD, headers={"Content-Type": "x"}),
    "empty header name": bad(HEAD, headers={"": "x"}),
    "header name with a colon": bad(HEAD, headers={"a:b": "x"}),
    "header name too long": bad(HEAD, headers={"a" * 65: "x"}),
    "header value with CRLF": bad(HEAD, headers={"x-a": "1\r\nx-b: 2"}),
    "header value with NUL": bad(HEAD, headers={"x-a": "1\x00"}),
    "header value not ASCII": bad(HEAD, headers={"x-a": "caf\u00e9"}),
    "header value too long": bad(HEAD, headers={"x-a": "v" * 1025}),
    "header value not text": bad(HEAD, headers={"x-a": 1}),
    "too many headers": bad(HEAD, headers={f"h{i}": "" for i in range(MAX_HEADERS + 1)}),
    "empty data": bad(ResponseData(b"x"), data=b""),
    "data over MAX_DATA": bad(ResponseData(b"x"), data=b"x" * (MAX_DATA + 1)),
    "data as text": bad(ResponseData(b"x"), data="x"),
    "unavailable without code": bad(Unavailable("busy"), code=None),
    "unavailable with empty code": bad(Unavailable("busy"), code=""),
    "unavailable without message": bad(Unavailable("busy"), message=None),
    "error with a long code": bad(RouteError("x"), code="c" * 65),
    "error with a long message": bad(RouteError("x"), message="m" * 1025),
    "table version 0": bad(TABLE, version=0),
    "table without hosts": bad(TABLE, hosts=None),
    "too many hosts": bad(TABLE, hosts=[host_map()] * (MAX_HOSTS + 1)),
    "host not a map": bad(TABLE, hosts=["node"]),
    "host without node id": bad(TABLE, hosts=[{**host_map(), "node_id": None}]),
    "host with too many addrs": bad(TABLE, hosts=[host_map(addrs=["/a"] * 33)]),
    "host with an empty addr": bad(TABLE, hosts=[host_map(addrs=[""])]),
    "host with too many models": bad(TABLE, hosts=[host_map(models=["m"] * 65)]),
    "host with a model id too long": bad(TABLE, hosts=[host_map(models=["m" * 257])]),
    "host with negative inflight": bad(TABLE, hosts=[host_map(inflight=-1)]),
    "unchanged version 0": bad(TableUnchanged(1), version=0),
    "unknown type": {"t": "progress"},
}


@pytest.mark.parametrize("m", SERVER_REFUSED.values(), ids=SERVER_REFUSED.keys())
def test_a_malformed_server_message_is_a_protocol_error(m: dict[str, Any]) -> None:
    with pytest.raises(ProtocolError):
        parse_server_message(m)


def test_limits_are_inclusive() -> None:
    headers = {f"x-h{i:02d}": "v" * 1024 for i in range(MAX_HEADERS)}
    headers["a" * 64] = headers.pop("x-h00")
    assert through_the_wire(ResponseHead(599, headers)) == ResponseHead(599, headers)
    host = HostEntry(
        "n" * 128, tuple(["a" * 256] * MAX_HOST_ADDRS), tuple(["m" * 256] * MAX_HOST_MODELS), 0
    )
    assert through_the_wire(RoutingTable(1, (host,))) == RoutingTable(1, (host,))


def test_encode_refuses_what_a_receiver_would_refuse() -> None:
    with pytest.raises(ValueError, match="would refuse"):
        encode(ResponseHead(200, {"Content-Type": "x"}))
    with pytest.raises(ValueError, match="would refuse"):
        encode(ResponseData(b""))
    with pytest.raises(ValueError, match="would refuse"):
        encode(RouteRequest("a b", "chat", BODY))
    with pytest.raises(ValueError, match="would refuse"):
        encode(TableUnchanged(0))
    big = HostEntry("n" * 128, tuple(["a" * 256] * 32), tuple(["m" * 256] * 64), 0)
    with pytest.raises(ValueError, match="limit"):
        encode(RoutingTable(1, (big,) * 100))


def test_the_frame_limit_depends_on_the_message() -> None:
    assert max_frame_of(REQUEST) == MAX_REQUEST_FRAME
    assert max_frame_of(TABLE) == MAX_TABLE_FRAME
    assert {max_frame_of(m) for m in MESSAGES if type(m) not in (RouteRequest, RoutingTable)} == {
        MAX_FRAME
    }


# Bodies and tables.


@settings(max_examples=50, deadline=None)
@given(st.binary(max_size=3 * MAX_DATA + 5) | st.integers(0, 4).map(lambda n: b"z" * n * MAX_DATA))
def test_split_body_reassembles_in_chunks_a_receiver_accepts(body: bytes) -> None:
    chunks = split_body(body)
    assert b"".join(c.data for c in chunks) == body
    assert all(1 <= len(c.data) <= MAX_DATA for c in chunks)
    assert len(chunks) == -(-len(body) // MAX_DATA)
    assert [through_the_wire(c) for c in chunks] == chunks


def test_make_table_keeps_the_longest_prefix_that_fits_one_frame() -> None:
    big = [HostEntry(f"{i:0128d}", tuple(["a" * 256] * 32), ("m",), i) for i in range(200)]
    table = make_table(big)
    assert 0 < len(table.hosts) < len(big)
    assert table.hosts == tuple(big[: len(table.hosts)])
    assert len(encode(table)) <= MAX_TABLE_FRAME
    assert table.version == table_version(table.hosts)
    small = [HostEntry(f"n{i}", (), (), 0) for i in range(MAX_HOSTS + 10)]
    assert len(make_table(small).hosts) == MAX_HOSTS
    with pytest.raises(ValueError, match="host"):
        make_table([HostEntry("", (), (), 0)])


def test_a_table_version_names_its_content() -> None:
    other = HostEntry(NODE, HOST.addrs, HOST.models, HOST.inflight + 1)
    assert make_table([HOST]).version == TABLE.version
    assert make_table([other]).version != TABLE.version
    assert make_table([]).version != TABLE.version
    assert all(1 <= make_table(h).version < 2**53 for h in ([], [HOST], [other]))


def test_answer_table_says_unchanged_only_for_the_current_version() -> None:
    assert answer_table(TABLE, TABLE.version) == TableUnchanged(TABLE.version)
    assert answer_table(TABLE, 0) == TABLE
    assert answer_table(TABLE, TABLE.version + 1) == TABLE


# The server side.


def test_the_server_takes_one_request_and_answers_it_in_order() -> None:
    server = RouteServerExchange()
    assert server.receive(REQUEST.to_map()) == REQUEST
    assert server.request == REQUEST
    server.end_of_stream()  # the client closed its side: fine after the request
    frames = [server.send(HEAD), *(server.send(c) for c in split_body(b"x" * 70000))]
    frames.append(server.send(ResponseEnd()))
    assert server.state is ServerState.DONE
    assert frames[0] == encode(HEAD)


def test_the_server_refuses_a_second_message() -> None:
    server = RouteServerExchange()
    server.receive(REQUEST.to_map())
    with pytest.raises(ProtocolError, match="one request per stream"):
        server.receive(REQUEST.to_map())
    assert server.state is ServerState.FAILED
    with pytest.raises(ProtocolError):
        server.receive(TableRequest().to_map())


def test_the_server_refuses_a_stream_closed_without_a_request() -> None:
    server = RouteServerExchange()
    with pytest.raises(ProtocolError, match="without a request"):
        server.end_of_stream()


def test_a_malformed_request_fails_the_server_exchange() -> None:
    server = RouteServerExchange()
    with pytest.raises(ProtocolError, match="'id'"):
        server.receive(bad(REQUEST, id=None))
    assert server.state is ServerState.FAILED and server.reason


@pytest.mark.parametrize(
    ("m", "code"),
    [
        ({"t": "embed", "v": 1, "input": "x"}, "unsupported"),
        (bad(REQUEST, endpoint="embedding"), "unsupported"),
        (bad(REQUEST, v=2), "version"),
        (bad(TableRequest(), v=2), "version"),
        ({"t": "x" * 1000}, "unsupported"),
    ],
)
def test_what_this_version_does_not_serve_is_answered_unavailable(
    m: dict[str, Any], code: str
) -> None:
    server = RouteServerExchange()
    reply = server.receive(m)
    assert isinstance(reply, Unavailable) and reply.code == code
    states = [server.state]
    with pytest.raises(RuntimeError):
        server.send(HEAD)
    assert parse_server_message(FrameDecoder(MAX_FRAME).feed(server.send(reply))[0]) == reply
    assert [*states, server.state] == [ServerState.REFUSING, ServerState.DONE]


@pytest.mark.parametrize(
    "endpoint", ["chat", "completion", "responses", "messages", "count_tokens", "embeddings"]
)
def test_every_api_of_a_node_is_an_endpoint_it_serves(endpoint: str) -> None:
    server = RouteServerExchange()
    request = RouteRequest("req-1", endpoint, BODY)
    assert server.receive(request.to_map()) == request
    assert server.state is ServerState.REQUEST


def test_the_server_answers_a_table_request_with_a_table_or_unchanged() -> None:
    server = RouteServerExchange()
    assert server.receive(TableRequest(TABLE.version).to_map()) == TableRequest(TABLE.version)
    states = [server.state]
    with pytest.raises(RuntimeError, match="version the client holds"):
        server.send(TableUnchanged(TABLE.version + 1))
    with pytest.raises(RuntimeError):
        server.send(HEAD)
    server.send(answer_table(TABLE, TABLE.version))
    assert [*states, server.state] == [ServerState.TABLE, ServerState.DONE]


@pytest.mark.parametrize(
    ("before", "msg"),
    [
        ([], HEAD),
        ([REQUEST], ResponseData(b"x")),
        ([REQUEST], ResponseEnd()),
        ([REQUEST], RouteError("internal")),
        ([REQUEST], TABLE),
        ([REQUEST, HEAD], HEAD),
        ([REQUEST, HEAD], Unavailable("busy")),
        ([REQUEST, HEAD, ResponseEnd()], ResponseData(b"x")),
        ([TableRequest()], ResponseEnd()),
        ([TableRequest(), TABLE], TABLE),
    ],
)
def test_the_server_will_not_send_out_of_order(
    before: list[RouteMessage], msg: ServerMessage
) -> None:
    server = RouteServerExchange()
    for m in before:
        if isinstance(m, RouteRequest | TableRequest):
            server.receive(m)
        else:
            server.send(m)
    state = server.state
    with pytest.raises(RuntimeError, match="cannot send"):
        server.send(msg)
    assert server.state is state


# The client side.


def client_after(request: RouteRequest | TableRequest, *answer: ServerMessage) -> Any:
    client = RouteClientExchange(request)
    client.start()
    for msg in answer:
        client.receive(msg.to_map())
    return client


def test_a_complete_answer_finishes_the_client() -> None:
    client = RouteClientExchange(REQUEST)
    assert client.start() == encode(REQUEST)
    assert client.max_frame == MAX_FRAME
    states = [client.state]
    assert client.retryable
    assert client.receive(HEAD.to_map()) == HEAD
    states.append(client.state)
    assert states == [ClientState.AWAITING_ANSWER, ClientState.STREAMING]
    assert client.head == HEAD
    assert not client.retryable
    assert client.receive(ResponseData(b"ab").to_map()) == ResponseData(b"ab")
    client.receive(ResponseEnd().to_map())
    assert client.finished and not client.failed and client.state is ClientState.DONE
    client.end_of_stream()


def test_unavailable_before_the_head_is_a_retryable_refusal() -> None:
    client = client_after(REQUEST, Unavailable("busy", "queue full"))
    assert client.state is ClientState.UNAVAILABLE
    assert client.finished and client.failed and client.retryable
    assert client.outcome == Unavailable("busy", "queue full")
    assert client.head is None


def test_an_error_after_the_head_fails_the_answer_and_is_not_retryable() -> None:
    client = client_after(REQUEST, HEAD, ResponseData(b"x"), RouteError("worker_failed", "gone"))
    assert client.state is ClientState.FAILED
    assert client.finished and client.failed and not client.retryable
    assert client.outcome == RouteError("worker_failed", "gone")
    assert client.reason and "worker_failed" in client.reason


@pytest.mark.parametrize(
    ("answer", "violation"),
    [
        ([ResponseData(b"x")], "before the head"),
        ([ResponseEnd()], "before the head"),
        ([RouteError("internal")], "before the head"),
        ([HEAD, HEAD], "second head"),
        ([HEAD, Unavailable("busy")], "unavailable after the head"),
        ([HEAD, ResponseEnd(), ResponseData(b"x")], "data after end"),
        ([HEAD, ResponseEnd(), ResponseEnd()], "end after end"),
        ([Unavailable("busy"), HEAD], "head after unavailable"),
        ([HEAD, RouteError("x"), ResponseData(b"x")], "data after error"),
        ([TABLE], "table for a forwarded request"),
        ([TableUnchanged(1)], "unchanged for a forwarded request"),
    ],
    ids=lambda x: x if isinstance(x, str) else "",
)
def test_the_client_refuses_an_answer_out_of_order(
    answer: list[ServerMessage], violation: str
) -> None:
    client = client_after(REQUEST, *answer[:-1])
    head_before = client.head
    with pytest.raises(ProtocolError):
        client.receive(answer[-1].to_map())
    assert client.state is ClientState.FAILED and client.finished and client.reason
    assert client.retryable == (head_before is None)
    with pytest.raises(ProtocolError):
        client.receive(ResponseEnd().to_map())


@pytest.mark.parametrize("answer", [[], [HEAD], [HEAD, ResponseData(b"x")]])
def test_a_stream_that_ends_before_the_answer_does_fails(answer: list[ServerMessage]) -> None:
    client = client_after(REQUEST, *answer)
    with pytest.raises(ProtocolError, match="stream ended"):
        client.end_of_stream()
    assert client.failed and client.retryable == (not answer)


def test_a_table_exchange_takes_a_table_unchanged_or_unavailable() -> None:
    fresh = client_after(TableRequest(0), TABLE)
    assert fresh.table == TABLE and fresh.finished and not fresh.failed
    assert fresh.max_frame == MAX_TABLE_FRAME
    held = client_after(TableRequest(TABLE.version), TableUnchanged(TABLE.version))
    assert held.table is None and held.state is ClientState.DONE
    refused = client_after(TableRequest(0), Unavailable("unsupported"))
    assert refused.state is ClientState.UNAVAILABLE and refused.retryable


@pytest.mark.parametrize(
    ("since", "answer"),
    [
        (0, [TableUnchanged(5)]),
        (4, [TableUnchanged(5)]),
        (0, [HEAD]),
        (0, [ResponseData(b"x")]),
        (0, [TABLE, TABLE]),
        (0, [TABLE, TableUnchanged(TABLE.version)]),
    ],
)
def test_the_client_refuses_a_wrong_table_answer(since: int, answer: list[ServerMessage]) -> None:
    client = client_after(TableRequest(since), *answer[:-1])
    with pytest.raises(ProtocolError):
        client.receive(answer[-1].to_map())
    assert client.failed and client.retryable  # a table request is always safe to repeat


def test_starting_twice_or_receiving_before_start_is_a_local_bug() -> None:
    client = RouteClientExchange(REQUEST)
    with pytest.raises(RuntimeError):
        client.receive(HEAD.to_map())
    client.start()
    with pytest.raises(RuntimeError):
        client.start()


# Both sides, through bytes.


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    edges = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges)]


@settings(max_examples=40, deadline=None)
@given(
    st.binary(min_size=1, max_size=3 * MAX_DATA),
    st.lists(st.integers(min_value=0), max_size=10),
    st.lists(st.integers(min_value=0), max_size=4),
)
def test_a_whole_exchange_through_any_split_of_the_bytes(
    body: bytes, cuts: list[int], request_cuts: list[int]
) -> None:
    client, server = RouteClientExchange(REQUEST), RouteServerExchange()
    to_server = FrameDecoder(server.max_frame)
    for chunk in split(client.start(), request_cuts):
        for m in to_server.feed(chunk):
            assert server.receive(m) == REQUEST
    server.end_of_stream()
    answer: list[ServerMessage] = [HEAD, *split_body(body), ResponseEnd()]
    wire = b"".join(server.send(m) for m in answer)
    to_client = FrameDecoder(client.max_frame)
    received = [client.receive(m) for c in split(wire, cuts) for m in to_client.feed(c)]
    client.end_of_stream()
    assert received == answer
    assert b"".join(m.data for m in received if isinstance(m, ResponseData)) == body
    assert client.state is ClientState.DONE and server.state is ServerState.DONE


# Hostile input: only ever ProtocolError.

field_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**64), max_value=2**64 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=10),
    st.binary(max_size=20),
    st.lists(st.text(max_size=5) | st.integers(0, 2**64 - 1), max_size=3),
    st.dictionaries(st.text(max_size=5), st.text(max_size=5) | st.integers(-5, 5), max_size=3),
)
header_maps = st.dictionaries(
    st.sampled_from(["content-type", "X-Up", "a b", "x-id", ""]),
    st.sampled_from(["text/plain", "a\r\nb", "", "\u00e9"]) | field_values,
    max_size=4,
)
host_maps = st.fixed_dictionaries(
    {},
    optional={
        "node_id": st.just(NODE) | field_values,
        "addrs": st.lists(st.sampled_from(["/ip4/1.2.3.4/tcp/1", ""]), max_size=3) | field_values,
        "models": st.lists(st.sampled_from(["m", ""]), max_size=3) | field_values,
        "inflight": st.integers(0, 5) | field_values,
    },
)
route_maps = st.fixed_dictionaries(
    {
        "t": st.sampled_from(
            [
                "request",
                "table",
                "head",
                "data",
                "end",
                "unavailable",
                "error",
                "unchanged",
                "other",
            ]
        )
        | field_values
    },
    optional={
        "v": st.just(1) | field_values,
        "id": st.just("req-1") | field_values,
        "endpoint": st.sampled_from(["chat", "completion", "embed"]) | field_values,
        "body": st.just(BODY) | field_values,
        "since": st.integers(0, 3) | field_values,
        "status": st.sampled_from([200, 404, 99, 600]) | field_values,
        "headers": header_maps | field_values,
        "data": st.binary(min_size=1, max_size=8) | field_values,
        "code": st.sampled_from(["busy", ""]) | field_values,
        "message": st.just("m") | field_values,
        "version": st.integers(0, 3) | field_values,
        "hosts": st.lists(host_maps | field_values, max_size=3) | field_values,
    },
)


def run_server(msgs: list[dict[str, Any]]) -> None:
    server = RouteServerExchange()
    try:
        for m in msgs:
            reply = server.receive(m)
            if isinstance(reply, Unavailable):
                server.send(reply)
        server.end_of_stream()
    except ProtocolError:
        assert server.state is ServerState.FAILED and server.reason


def run_clients(msgs: list[dict[str, Any]]) -> None:
    for request in (REQUEST, TableRequest(0), TableRequest(1)):
        client = RouteClientExchange(request)
        client.start()
        try:
            for m in msgs:
                client.receive(m)
            client.end_of_stream()
        except ProtocolError:
            assert client.state is ClientState.FAILED and client.reason
        else:
            assert client.finished


@settings(max_examples=300, deadline=None)
@given(st.lists(route_maps, max_size=5))
def test_random_maps_raise_only_protocol_error_on_both_sides(msgs: list[dict[str, Any]]) -> None:
    for m in msgs:
        try:
            parse_client_message(m)
        except ProtocolError:
            pass
        try:
            parse_server_message(m)
        except ProtocolError:
            pass
    run_server(msgs)
    run_clients(msgs)


valid_answers: st.SearchStrategy[list[ServerMessage]] = st.lists(
    st.sampled_from(
        [
            HEAD,
            ResponseData(b"abc"),
            ResponseEnd(),
            Unavailable("busy"),
            RouteError("internal"),
            TABLE,
            TableUnchanged(1),
        ]
    ),
    max_size=5,
)
hostile_bytes = st.one_of(
    st.binary(max_size=200),
    st.lists(route_maps, max_size=4).map(lambda ms: b"".join(encode_frame(m) for m in ms)),
    valid_answers.map(lambda ms: b"".join(encode(m) for m in ms)),
    st.tuples(valid_answers, st.binary(max_size=20)).map(
        lambda p: b"".join(encode(m) for m in p[0]) + p[1]
    ),
)


@settings(max_examples=300, deadline=None)
@given(hostile_bytes, st.lists(st.integers(min_value=0), max_size=6))
def test_random_byte_streams_raise_only_protocol_error_on_both_sides(
    data: bytes, cuts: list[int]
) -> None:
    chunks = split(data, cuts)
    server, to_server = RouteServerExchange(), FrameDecoder(RouteServerExchange.max_frame)
    try:
        for chunk in chunks:
            for m in to_server.feed(chunk):
                reply = server.receive(m)
                if isinstance(reply, Unavailable):
                    server.send(reply)
        server.end_of_stream()
    except ProtocolError:
        pass
    for request in (REQUEST, TableRequest(0), TableRequest(1)):
        client = RouteClientExchange(request)
        client.start()
        to_client = FrameDecoder(client.max_frame)
        try:
            for chunk in chunks:
                for m in to_client.feed(chunk):
                    client.receive(m)
            client.end_of_stream()
        except ProtocolError:
            pass  # from the decoder or the exchange: either way the driver resets
        else:
            assert client.finished
