"""Resumable answers (mid-stream failover): the progress a worker reports while it
generates, and what the requesting node keeps of it to resume elsewhere; no I/O.

A worker asked for progress (chat and completion answers) sends its answer as server-sent
events with SSE comments among them, which the requesting node reads and never passes on:

- ``:meshp2p-start {"id": ..., "created": ...}`` first: the answer's id and time, which a
  resumed answer keeps;
- ``:meshp2p-step <token id>`` after the events of each generated token: those events are
  final, and the token is one to replay;
- for an answer that is not streamed, ``event: meshp2p-answer`` with
  ``{"status": ..., "body": {...}}`` at the end, the HTTP answer to give the client.

``ProgressReader`` holds back a token's events until its step arrives, so when a host
breaks off, what the client has is exactly the events of the tokens in ``tokens``: the
answer resumes on another host from those tokens (``Resume``), and that host sends
only what comes after them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

PROGRESS_HEADER = "x-meshp2p-progress"
"""On a worker's answer: it carries progress comments (value ``1``)."""
RESUMED_HEADER = "x-meshp2p-resumed"
"""On a resumed answer: how many tokens the host replayed (the requester checks it)."""

MAX_RESUME_TOKENS = 2**18
"""Tokens a resume may carry: more than any context this project loads."""
MAX_ANSWER_ID_LEN = 64
MAX_EVENT = 8 * 2**20 + 2**16
"""An SSE event of a progress answer: a whole non-streamed body fits."""

_START = b":meshp2p-start "
_STEP = b":meshp2p-step "
_ANSWER = b"event: meshp2p-answer\ndata: "


@dataclass(frozen=True)
class Resume:
    """Where a broken-off answer goes on: the tokens it had generated (all of whose
    events reached the client), and its id and creation time."""

    tokens: tuple[int, ...]
    id: str
    created: int

    def to_json(self) -> dict[str, Any]:
        return {"tokens": list(self.tokens), "id": self.id, "created": self.created}

    @classmethod
    def from_json(cls, obj: Any) -> Resume:
        """ValueError naming what is wrong with ``obj``."""
        if not isinstance(obj, dict):
            raise ValueError("resume must be an object")
        tokens, answer_id, created = obj.get("tokens"), obj.get("id"), obj.get("created")
        if not isinstance(tokens, list) or not 0 < len(tokens) <= MAX_RESUME_TOKENS:
            raise ValueError(f"resume tokens must be a list of 1..{MAX_RESUME_TOKENS} token ids")
        if not all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in tokens):
            raise ValueError("resume tokens must be token ids (integers >= 0)")
        if not isinstance(answer_id, str) or not 0 < len(answer_id) <= MAX_ANSWER_ID_LEN:
            raise ValueError(f"resume id must be 1..{MAX_ANSWER_ID_LEN} characters")
        if not isinstance(created, int) or isinstance(created, bool) or created < 0:
            raise ValueError("resume created must be an integer >= 0")
        return cls(tuple(tokens), answer_id, created)


def start_frame(answer_id: str, created: int) -> bytes:
    return _START + json.dumps({"id": answer_id, "created": created}).encode() + b"\n\n"


def step_frame(token: int) -> bytes:
    return _STEP + str(token).encode() + b"\n\n"


def answer_frame(status: int, body: dict[str, Any]) -> bytes:
    payload = json.dumps({"status": status, "body": body}, separators=(",", ":")).encode()
    return _ANSWER + payload + b"\n\n"


class ProgressError(Exception):
    """A progress answer that does not follow the format: treat the host as broken."""


class ProgressReader:
    """The requesting side of one answer with progress, across the hosts that give it.

    ``feed`` takes body bytes as they come and returns those the client may have now
    (only for a streamed answer: a whole one waits for ``answer``); ``end`` is called
    when a host finished normally and returns the rest. ``resume`` is what the next host
    needs after a host broke off (None while no token is final: start afresh).
    """

    def __init__(self, stream: bool) -> None:
        self.stream = stream
        self.tokens: list[int] = []
        self.id: str | None = None
        self.created = 0
        #: A whole answer's status and JSON body, once its host sent them.
        self.answer: tuple[int, bytes] | None = None
        self._buffer = b""
        self._held: list[bytes] = []

    def restart(self) -> None:
        """A host broke off: what it sent after its last step will come again."""
        self._buffer = b""
        self._held = []

    def resume(self) -> Resume | None:
        if not self.tokens or self.id is None:
            return None
        return Resume(tuple(self.tokens), self.id, self.created)

    def feed(self, data: bytes) -> bytes:
        self._buffer += data
        out: list[bytes] = []
        while True:
            end = self._buffer.find(b"\n\n")
            if end == -1:
                break
            event, self._buffer = self._buffer[: end + 2], self._buffer[end + 2 :]
            self._event(event, out)
        if len(self._buffer) > MAX_EVENT:
            raise ProgressError(f"an event of the answer is over {MAX_EVENT} bytes")
        return b"".join(out)

    def end(self) -> bytes:
        """The host ended its answer normally: everything held back is final."""
        if self._buffer.strip():
            self._held.append(self._buffer)
        self._buffer = b""
        out = b"".join(self._held) if self.stream else b""
        self._held = []
        return out

    def _event(self, event: bytes, out: list[bytes]) -> None:
        if event.startswith(_STEP):
            try:
                token = int(event[len(_STEP) :].strip())
            except ValueError:
                raise ProgressError("a step names no token id") from None
            if len(self.tokens) >= MAX_RESUME_TOKENS:
                raise ProgressError("the answer has more steps than a resume can carry")
            self.tokens.append(token)
            out.extend(self._held)
            self._held = []
        elif event.startswith(_START):
            try:
                start = json.loads(event[len(_START) :])
                self.id, self.created = str(start["id"]), int(start["created"])
            except (ValueError, KeyError, TypeError):
                raise ProgressError("the start comment is not {id, created}") from None
        elif event.startswith(_ANSWER):
            try:
                answer = json.loads(event[len(_ANSWER) :])
                status, body = int(answer["status"]), answer["body"]
            except (ValueError, KeyError, TypeError):
                raise ProgressError("the answer event is not {status, body}") from None
            self.answer = (status, json.dumps(body).encode())
        elif event.startswith(b":"):
            pass  # other comments: keep-alives
        elif self.stream:
            self._held.append(event)
