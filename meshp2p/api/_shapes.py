"""How each endpoint writes a generated answer: its stream's events and its final body,
built from the generation's text deltas and its end; no I/O.

The worker child drives one ``AnswerShaper`` per request: ``opening`` when the first
token is ready, ``delta`` for each piece of text, then ``closing`` (a stream) or ``body``
(a single JSON answer); ``failure`` is the event that ends a stream broken off midway.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from ._openai import (
    SSE_DONE,
    ApiError,
    Endpoint,
    ErrorStyle,
    ResponseShaper,
    error_body,
    sse,
    usage,
)


@dataclass(frozen=True)
class Ending:
    """How a generation ended, in API terms."""

    reason: str
    """``stop``, ``length`` or ``tool_calls``."""
    prompt_tokens: int
    completion_tokens: int
    text: str
    """The answer's text (without its tool calls)."""
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    """OpenAI chat tool calls: ``{"id", "type": "function", "function": {"name", "arguments"}}``."""
    stop_sequence: str | None = None
    """The stop string that ended the answer, if one did."""


class AnswerShaper(Protocol):
    style: ErrorStyle

    def opening(self, prompt_tokens: int) -> list[bytes]:
        """The stream's first events, sent once the first token is ready."""
        ...

    def delta(self, text: str) -> list[bytes]: ...

    def closing(self, end: Ending) -> list[bytes]:
        """The stream's last events."""
        ...

    def failure(self, error: ApiError) -> bytes:
        """The event that ends a stream broken off midway."""
        ...

    def body(self, end: Ending) -> dict[str, Any]:
        """The whole answer, not streamed."""
        ...


def function_tool(name: str, parameters: dict[str, Any], description: Any) -> dict[str, Any]:
    """A tool of another API's request as a chat-completions function tool, the shape
    the engine takes; the description only where it is text."""
    function: dict[str, Any] = {"name": name, "parameters": parameters}
    if isinstance(description, str):
        function["description"] = description
    return {"type": "function", "function": function}


def sse_event(name: str, obj: Any) -> bytes:
    """One server-sent event with an ``event:`` name, as the Responses and Messages APIs
    send them (Anthropic's SDK reads only named events)."""
    data = json.dumps(obj, separators=(",", ":")).encode()
    return b"event: " + name.encode() + b"\ndata: " + data + b"\n\n"


class ChatShaper:
    """Chat and completion answers, OpenAI's shapes (``ResponseShaper``)."""

    style: ErrorStyle = "openai"

    def __init__(self, endpoint: str, model: str, include_usage: bool, *, now: int) -> None:
        kind: Endpoint = "chat" if endpoint == "chat" else "completion"
        self.shaper = ResponseShaper(kind, model, include_usage, now=now)

    def opening(self, prompt_tokens: int) -> list[bytes]:
        first = self.shaper.first_chunk()
        return [] if first is None else [sse(first)]

    def delta(self, text: str) -> list[bytes]:
        return [sse(self.shaper.delta_chunk(text))]

    def closing(self, end: Ending) -> list[bytes]:
        calls = [{**call, "index": i} for i, call in enumerate(end.tool_calls)]
        chunks = self.shaper.final_chunks(
            end.reason, usage(end.prompt_tokens, end.completion_tokens), calls
        )
        return [*(sse(chunk) for chunk in chunks), SSE_DONE]

    def failure(self, error: ApiError) -> bytes:
        return sse(error_body(error.message, type=error.type, code=error.code))

    def body(self, end: Ending) -> dict[str, Any]:
        return self.shaper.response(
            end.text, end.reason, usage(end.prompt_tokens, end.completion_tokens), end.tool_calls
        )


def shaper_for(endpoint: str, model: str, request: Mapping[str, Any], *, now: int) -> AnswerShaper:
    """The shaper of ``endpoint`` for one worker request (its ``params`` carry what the
    answer echoes back, under ``shape``)."""
    shape = request.get("params", {}).get("shape", {})
    if endpoint == "responses":
        from ._responses import ResponsesShaper

        return ResponsesShaper(model, shape, now=now)
    if endpoint == "messages":
        from ._anthropic import MessagesShaper

        return MessagesShaper(model, shape)
    return ChatShaper(endpoint, model, bool(request.get("include_usage")), now=now)
