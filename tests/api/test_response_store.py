"""previous_response_id: conversations kept per node, bounded in count, age and bytes;
and the capture of a response object from a plain or streamed answer."""

from __future__ import annotations

import json
from typing import Any

import pytest

from meshp2p.api import ApiError
from meshp2p.api._response_store import ResponseCapture, ResponseStore


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def body(**fields: Any) -> bytes:
    return json.dumps({"model": "m", **fields}).encode()


RESPONSE = {
    "id": "resp_1",
    "object": "response",
    "output": [
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Hi"}]}
    ],
}


def test_a_kept_conversation_goes_before_the_next_input() -> None:
    store = ResponseStore(clock=Clock())
    raw, items = store.expand(body(input="Hello"))
    assert items == [{"type": "message", "role": "user", "content": "Hello"}]
    assert store.keep(items, RESPONSE)
    raw, items = store.expand(body(input="Again", previous_response_id="resp_1"))
    sent = json.loads(raw)
    assert sent["input"] == [
        {"type": "message", "role": "user", "content": "Hello"},
        RESPONSE["output"][0],
        {"type": "message", "role": "user", "content": "Again"},
    ]
    assert items == sent["input"]


def test_a_response_not_kept_here_is_400_saying_so() -> None:
    with pytest.raises(ApiError) as info:
        ResponseStore(clock=Clock()).expand(body(input="x", previous_response_id="resp_x"))
    error = info.value
    assert (error.status, error.param, error.code) == (
        400,
        "previous_response_id",
        "previous_response_not_found",
    )
    assert "not kept by this node" in error.message


def test_store_false_is_not_kept_and_bad_bodies_pass_through() -> None:
    store = ResponseStore(clock=Clock())
    assert store.expand(body(input="x", store=False))[1] is None
    assert store.expand(b"{nope") == (b"{nope", None)
    assert store.expand(b"[1]") == (b"[1]", None)


def test_kept_conversations_are_bounded_in_count_age_and_bytes() -> None:
    clock = Clock()
    store = ResponseStore(max_count=2, max_age=60, max_bytes=200, clock=clock)
    item = [{"c": "x" * 10}]
    for i in range(3):
        store.put(f"r{i}", item)
    assert [store.get(f"r{i}") is not None for i in range(3)] == [False, True, True]
    clock.now = 61
    assert store.get("r2") is None and len(store) == 0
    assert not store.put("big", [{"c": "x" * 300}])
    store.put("a", [{"c": "x" * 120}])
    store.put("b", [{"c": "x" * 120}])
    assert store.get("a") is None and store.get("b") is not None
    assert store.bytes <= 200


def test_capture_finds_the_response_in_a_stream_split_anywhere() -> None:
    stream = (
        b'event: response.created\ndata: {"type":"response.created","response":{"id":"resp_1"}}\n\n'
        b"event: response.completed\ndata: "
        + json.dumps({"type": "response.completed", "response": RESPONSE}).encode()
        + b"\n\n"
    )
    capture = ResponseCapture(streamed=True)
    for i in range(0, len(stream), 7):
        capture.feed(stream[i : i + 7])
    assert capture.result() == RESPONSE


def test_capture_reads_a_plain_answer_and_gives_up_past_its_limit() -> None:
    capture = ResponseCapture(streamed=False)
    capture.feed(json.dumps(RESPONSE).encode())
    assert capture.result() == RESPONSE
    small = ResponseCapture(streamed=False, limit=10)
    small.feed(json.dumps(RESPONSE).encode())
    assert small.result() is None
