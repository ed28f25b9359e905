"""Anthropic's Messages API (``POST /v1/messages`` and ``/v1/messages/count_tokens``):
request validation into the chat parameters a worker runs, and the answer's shapes
(the message object and its stream events), and Anthropic's error shape
(``anthropic_error_body``); no I/O.

Content blocks become a chat conversation: ``text`` blocks text, an assistant's
``tool_use`` blocks its tool calls, a user's ``tool_result`` blocks tool results.
``thinking`` blocks are skipped. Tools with a ``type`` of Anthropic's own (web search,
the bash and text-editor tools, ...) are left out and named in the
``x-meshp2p-ignored-fields`` header.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from typing import Any

from ._openai import (
    ApiError,
    ErrorStyle,
    InferenceRequest,
    _bad,
    _model,
    _number,
    _positive_int,
    _unsupported,
)
from ._shapes import Ending, function_tool, sse_event

MAX_MESSAGES = 4096
MAX_TOOLS = 128
MAX_STOP_SEQUENCES = 16

_NO_EFFECT = frozenset({"metadata", "service_tier", "cache_control"})
_REJECTED = {
    "mcp_servers": "this node connects to no MCP servers",
    "container": "this node runs no code containers",
}
_STOP_REASONS = {"length": "max_tokens", "tool_calls": "tool_use"}
_ERROR_TYPES = {
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
    529: "overloaded_error",
}


def anthropic_error_body(status: int, message: str) -> dict[str, Any]:
    """The JSON body Anthropic's API uses for errors (also its stream's ``error`` event)."""
    kind = _ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
    return {"type": "error", "error": {"type": kind, "message": message}}


def parse_messages(endpoint: str, body: dict[str, Any], raw: bytes) -> InferenceRequest:
    """Validate a Messages API body (``messages``) or a token count (``count_tokens``)."""
    model = _model(body)
    counting = endpoint == "count_tokens"
    stream = False if counting else body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise _bad("'stream' must be a boolean", "stream", "invalid_type")
    for name, why in _REJECTED.items():
        if body.get(name):
            raise _unsupported(name, why)
    params: dict[str, Any] = {}
    if not counting:
        if body.get("max_tokens") is None:
            raise _bad("'max_tokens' is required", "max_tokens", "missing_required_parameter")
        _positive_int(body, "max_tokens", "max_tokens", params)
        _number(body, "temperature", 0.0, 1.0, params)
        _number(body, "top_p", 0.0, 1.0, params)
        _positive_int(body, "top_k", "top_k", params)
        _stop_sequences(body, params)
    params["messages"] = _system(body.get("system")) + _conversation(body.get("messages"))
    ignored = _tools(body, params)
    params["shape"] = {"stop_sequences": params.get("stop", [])}
    handled = {
        "model",
        "stream",
        "messages",
        "system",
        "max_tokens",
        "temperature",
        "top_p",
        "top_k",
        "stop_sequences",
        "tools",
        "tool_choice",
        *_REJECTED,
    }
    if counting:
        # A count takes a whole Messages request; generation settings do not change it.
        handled |= {"max_tokens", "temperature", "top_p", "top_k", "stop_sequences", "stream"}
    ignored += [k for k in body if k not in handled and k not in _NO_EFFECT]
    if counting:
        return InferenceRequest(
            "count_tokens", model, False, False, params, tuple(sorted(ignored)), raw
        )
    return InferenceRequest("messages", model, stream, False, params, tuple(sorted(ignored)), raw)


def _stop_sequences(body: Mapping[str, Any], params: dict[str, Any]) -> None:
    stops = body.get("stop_sequences")
    if stops is None:
        return
    if (
        not isinstance(stops, list)
        or len(stops) > MAX_STOP_SEQUENCES
        or not all(isinstance(s, str) and s for s in stops)
    ):
        raise _bad(
            f"'stop_sequences' must be a list of at most {MAX_STOP_SEQUENCES} non-empty strings",
            "stop_sequences",
        )
    params["stop"] = list(stops)


def _block_text(block: Mapping[str, Any], param: str) -> str:
    text = block.get("text")
    if not isinstance(text, str):
        raise _bad(f"'{param}.text' must be a string", param, "invalid_type")
    return text


def _system(system: Any) -> list[dict[str, Any]]:
    if system is None or system == "" or system == []:
        return []
    if isinstance(system, str):
        return [{"role": "system", "content": system}]
    if not isinstance(system, list):
        raise _bad("'system' must be a string or a list of text blocks", "system", "invalid_type")
    texts = []
    for i, block in enumerate(system):
        if not isinstance(block, dict) or block.get("type") != "text":
            raise _bad(f"'system[{i}]' must be a text block", "system")
        texts.append(_block_text(block, f"system[{i}]"))
    return [{"role": "system", "content": "\n\n".join(texts)}]


def _tool_result_text(content: Any, param: str) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise _bad(f"'{param}' must be a string or a list of text blocks", param, "invalid_type")
    texts = []
    for i, block in enumerate(content):
        if not isinstance(block, dict) or block.get("type") != "text":
            kind = block.get("type") if isinstance(block, dict) else None
            raise _unsupported(f"{param}[{i}]", f"tool results of type {kind!r}; send text")
        texts.append(_block_text(block, f"{param}[{i}]"))
    return "\n\n".join(texts)


def _conversation(messages: Any) -> list[dict[str, Any]]:
    if not isinstance(messages, list) or not messages:
        raise _bad("'messages' must be a non-empty list", "messages", "missing_required_parameter")
    if len(messages) > MAX_MESSAGES:
        raise _bad(f"'messages' holds more than {MAX_MESSAGES} messages", "messages")
    out: list[dict[str, Any]] = []
    names: dict[str, str] = {}  # tool_use id -> tool name
    for i, message in enumerate(messages):
        param = f"messages[{i}]"
        if not isinstance(message, dict):
            raise _bad(f"'{param}' must be an object", param, "invalid_type")
        role = message.get("role")
        if role not in ("user", "assistant"):
            raise _bad(f"'{param}.role' must be user or assistant", param)
        content = message.get("content")
        if isinstance(content, str):
            out.append({"role": role, "content": content})
            continue
        if not isinstance(content, list):
            raise _bad(
                f"'{param}.content' must be a string or a list of content blocks",
                f"{param}.content",
                "invalid_type",
            )
        texts: list[str] = []
        calls: list[dict[str, Any]] = []
        results: list[dict[str, Any]] = []
        for j, block in enumerate(content):
            where = f"{param}.content[{j}]"
            kind = block.get("type") if isinstance(block, dict) else None
            if not isinstance(kind, str):
                raise _bad(f"'{where}' must be a content block with a 'type'", where)
            assert isinstance(block, dict)
            if kind == "text":
                texts.append(_block_text(block, where))
            elif kind in ("thinking", "redacted_thinking"):
                continue
            elif kind == "tool_use" and role == "assistant":
                call_id, name, args = block.get("id"), block.get("name"), block.get("input", {})
                if not isinstance(call_id, str) or not isinstance(name, str) or not name:
                    raise _bad(f"'{where}' needs a string 'id' and 'name'", where)
                if not isinstance(args, dict):
                    raise _bad(f"'{where}.input' must be an object", where, "invalid_type")
                names[call_id] = name
                arguments = json.dumps(args, ensure_ascii=False)
                calls.append(
                    {
                        "id": call_id,
                        "type": "function",
                        "function": {"name": name, "arguments": arguments},
                    }
                )
            elif kind == "tool_result" and role == "user":
                call_id = block.get("tool_use_id")
                if not isinstance(call_id, str):
                    raise _bad(f"'{where}.tool_use_id' must be a string", where, "invalid_type")
                text = _tool_result_text(block.get("content"), f"{where}.content")
                if block.get("is_error"):
                    text = f"Error: {text}"
                result = {"role": "tool", "tool_call_id": call_id, "content": text}
                if call_id in names:
                    result["name"] = names[call_id]
                results.append(result)
            else:
                raise _unsupported(where, f"{kind!r} blocks in {role} messages; send text")
        # A user turn's tool results answer the calls before it: they come first.
        out += results
        if calls:
            out.append({"role": role, "content": "\n\n".join(texts) or None, "tool_calls": calls})
        elif texts or not results:
            out.append({"role": role, "content": "\n\n".join(texts)})
    return out


def _tools(body: Mapping[str, Any], params: dict[str, Any]) -> list[str]:
    tools = body.get("tools")
    choice = body.get("tool_choice")
    left_out: list[str] = []
    if tools is None or tools == []:
        if isinstance(choice, dict) and choice.get("type") in ("any", "tool"):
            raise _bad("'tool_choice' needs 'tools'", "tool_choice")
        return left_out
    if not isinstance(tools, list) or len(tools) > MAX_TOOLS:
        raise _bad(f"'tools' must be a list of at most {MAX_TOOLS} tools", "tools")
    functions: list[dict[str, Any]] = []
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict):
            raise _bad(f"'tools[{i}]' must be an object", "tools", "invalid_type")
        kind = tool.get("type", "custom")
        if kind != "custom":
            left_out.append(f"tools[{i}]:{kind}"[:64])
            continue
        name, schema = tool.get("name"), tool.get("input_schema")
        if not isinstance(name, str) or not name:
            raise _bad(f"'tools[{i}].name' must be a non-empty string", "tools")
        if not isinstance(schema, dict):
            raise _bad(f"'tools[{i}].input_schema' must be a JSON schema object", "tools")
        functions.append(function_tool(name, schema, tool.get("description")))
    if functions:
        params["tools"] = functions
        if choice is not None:
            params["tool_choice"] = _tool_choice(choice, functions)
    return left_out


def _tool_choice(choice: Any, functions: list[dict[str, Any]]) -> Any:
    kind = choice.get("type") if isinstance(choice, dict) else None
    if kind in ("auto", "none"):
        return kind
    if kind == "any":
        return "required"
    if kind == "tool":
        assert isinstance(choice, dict)
        name = choice.get("name")
        if not any(f["function"]["name"] == name for f in functions):
            raise _bad(f"'tool_choice' names {name!r}, which is not in 'tools'", "tool_choice")
        return {"type": "function", "function": {"name": name}}
    raise _bad(
        "'tool_choice' must be {'type': 'auto' | 'any' | 'none'} or {'type': 'tool', 'name': ...}",
        "tool_choice",
    )


def _tool_use(call: Mapping[str, Any]) -> dict[str, Any]:
    function = call["function"]
    try:
        arguments = json.loads(function["arguments"])
    except (ValueError, RecursionError):
        arguments = {}
    if not isinstance(arguments, dict):
        arguments = {"value": arguments}
    return {
        "type": "tool_use",
        "id": "toolu_" + str(call["id"]).removeprefix("call_"),
        "name": function["name"],
        "input": arguments,
    }


class MessagesShaper:
    """One Messages API answer: the message object and its stream events."""

    style: ErrorStyle = "anthropic"

    def __init__(self, model: str, shape: Mapping[str, Any]) -> None:
        self.model = model
        self.stop_sequences = list(shape.get("stop_sequences") or [])
        self.id = f"msg_{uuid.uuid4().hex[:24]}"
        self.text_open = False
        self.blocks = 0

    def _stop(self, end: Ending) -> tuple[str, str | None]:
        if end.reason == "stop" and end.stop_sequence in self.stop_sequences:
            return "stop_sequence", end.stop_sequence
        return _STOP_REASONS.get(end.reason, "end_turn"), None

    def _message(self, content: list[dict[str, Any]], usage: dict[str, int]) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": content,
            "stop_reason": None,
            "stop_sequence": None,
            "usage": usage,
        }

    def opening(self, prompt_tokens: int) -> list[bytes]:
        start = self._message([], _usage(prompt_tokens, 0))
        return [sse_event("message_start", {"type": "message_start", "message": start})]

    def _start_block(self, block: dict[str, Any]) -> bytes:
        event = {"type": "content_block_start", "index": self.blocks, "content_block": block}
        return sse_event("content_block_start", event)

    def _stop_block(self) -> bytes:
        event = {"type": "content_block_stop", "index": self.blocks}
        self.blocks += 1
        return sse_event("content_block_stop", event)

    def delta(self, text: str) -> list[bytes]:
        frames = []
        if not self.text_open:
            self.text_open = True
            frames.append(self._start_block({"type": "text", "text": ""}))
        delta = {"type": "text_delta", "text": text}
        event = {"type": "content_block_delta", "index": self.blocks, "delta": delta}
        frames.append(sse_event("content_block_delta", event))
        return frames

    def closing(self, end: Ending) -> list[bytes]:
        frames: list[bytes] = []
        if not self.text_open and not end.tool_calls:
            frames.append(self._start_block({"type": "text", "text": ""}))
            self.text_open = True
        if self.text_open:
            frames.append(self._stop_block())
        for call in end.tool_calls:
            block = _tool_use(call)
            frames.append(self._start_block({**block, "input": {}}))
            delta = {"type": "input_json_delta", "partial_json": json.dumps(block["input"])}
            event = {"type": "content_block_delta", "index": self.blocks, "delta": delta}
            frames.append(sse_event("content_block_delta", event))
            frames.append(self._stop_block())
        reason, sequence = self._stop(end)
        message_delta = {
            "type": "message_delta",
            "delta": {"stop_reason": reason, "stop_sequence": sequence},
            "usage": {"output_tokens": end.completion_tokens},
        }
        frames.append(sse_event("message_delta", message_delta))
        frames.append(sse_event("message_stop", {"type": "message_stop"}))
        return frames

    def failure(self, error: ApiError) -> bytes:
        return sse_event("error", anthropic_error_body(max(500, error.status), error.message))

    def body(self, end: Ending) -> dict[str, Any]:
        content: list[dict[str, Any]] = []
        if end.text or not end.tool_calls:
            content.append({"type": "text", "text": end.text})
        content += [_tool_use(call) for call in end.tool_calls]
        message = self._message(content, _usage(end.prompt_tokens, end.completion_tokens))
        message["stop_reason"], message["stop_sequence"] = self._stop(end)
        return message


def _usage(input_tokens: int, output_tokens: int) -> dict[str, int]:
    return {
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
    }


def count_tokens_body(prompt_tokens: int) -> dict[str, int]:
    return {"input_tokens": prompt_tokens}
