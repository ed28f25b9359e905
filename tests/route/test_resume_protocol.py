"""The pure parts of mid-stream failover: /mesh/route's ``progress`` and ``resume`` keys,
and the requester's ``ProgressReader`` (what reaches the client, what resumes)."""

from __future__ import annotations

import json

import pytest

from meshp2p._errors import ProtocolError
from meshp2p.api._resume import (
    MAX_RESUME_TOKENS,
    ProgressError,
    ProgressReader,
    Resume,
    answer_frame,
    start_frame,
    step_frame,
)
from meshp2p.route import _protocol as _route

BODY = b'{"model":"m","messages":[{"role":"user","content":"hi"}]}'
RESUME = Resume((2, 4521, 107), "chatcmpl-1", 1767225600)


def test_progress_and_resume_travel_and_are_absent_by_default() -> None:
    plain = _route.RouteRequest("r1", "chat", BODY)
    assert "progress" not in plain.to_map() and "resume" not in plain.to_map()
    assert _route.parse_client_message(plain.to_map()) == plain
    resumed = _route.RouteRequest("r2", "chat", BODY, progress=True, resume=RESUME)
    assert _route.parse_client_message(resumed.to_map()) == resumed
    assert _route.encode(resumed)  # within every limit


@pytest.mark.parametrize(
    ("resume", "why"),
    [
        ({"tokens": [], "id": "x", "created": 1}, "must not be empty"),
        ({"tokens": [-1], "id": "x", "created": 1}, "token ids"),
        ({"tokens": [2**32], "id": "x", "created": 1}, "token ids"),
        ({"tokens": [True], "id": "x", "created": 1}, "token ids"),
        ({"tokens": [1], "id": "", "created": 1}, "'id'"),
        ({"tokens": [1], "id": "x" * 65, "created": 1}, "'id'"),
        ({"tokens": [1], "id": "x", "created": -1}, "'created'"),
        ({"tokens": [1] * (MAX_RESUME_TOKENS + 1), "id": "x", "created": 1}, "'tokens'"),
        ("tokens", "must be a map"),
    ],
)
def test_a_bad_resume_is_a_protocol_error(resume: object, why: str) -> None:
    m = {**_route.RouteRequest("r", "chat", BODY).to_map(), "resume": resume}
    with pytest.raises(ProtocolError, match=why):
        _route.parse_client_message(m)


def test_progress_must_be_a_boolean() -> None:
    m = {**_route.RouteRequest("r", "chat", BODY).to_map(), "progress": 1}
    with pytest.raises(ProtocolError, match="'progress'"):
        _route.parse_client_message(m)


def test_resume_json_is_checked_for_the_worker() -> None:
    assert Resume.from_json(RESUME.to_json()) == RESUME
    for bad in ({}, {"tokens": [1], "id": "x"}, {"tokens": ["1"], "id": "x", "created": 1}):
        with pytest.raises(ValueError):
            Resume.from_json(bad)


def event(text: str) -> bytes:
    return b"data: " + json.dumps({"t": text}).encode() + b"\n\n"


def test_a_tokens_events_reach_the_client_once_its_step_arrives() -> None:
    reader = ProgressReader(stream=True)
    assert reader.feed(start_frame("chatcmpl-1", 7) + event("role")) == b""
    assert reader.resume() is None  # nothing final yet: the next host starts afresh
    # Bytes come cut anywhere.
    data = event("a") + step_frame(11) + event("b") + step_frame(12) + event("c")
    out = b"".join(reader.feed(data[i : i + 5]) for i in range(0, len(data), 5))
    assert out == event("role") + event("a") + event("b")
    assert reader.resume() == Resume((11, 12), "chatcmpl-1", 7)
    # The host breaks off: "c" is dropped, and comes again from the next host.
    reader.restart()
    assert reader.feed(start_frame("chatcmpl-1", 7) + event("c") + step_frame(13)) == event("c")
    assert reader.feed(event("end") + b"data: [DONE]\n\n") == b""
    assert reader.end() == event("end") + b"data: [DONE]\n\n"
    assert reader.tokens == [11, 12, 13]


def test_a_whole_answer_comes_from_its_answer_event() -> None:
    reader = ProgressReader(stream=False)
    body = {"choices": [{"text": "hi"}]}
    frames = start_frame("cmpl-1", 1) + step_frame(5) + answer_frame(200, body)
    assert reader.feed(frames) == b"" and reader.end() == b""
    assert reader.answer == (200, json.dumps(body).encode())


@pytest.mark.parametrize(
    "frame",
    [b":meshp2p-step x\n\n", b":meshp2p-start {}\n\n", b"event: meshp2p-answer\ndata: []\n\n"],
)
def test_a_malformed_progress_comment_breaks_the_host(frame: bytes) -> None:
    with pytest.raises(ProgressError):
        ProgressReader(stream=True).feed(frame)
