"""OpenAI's Responses API (``POST /v1/responses``): request validation into the chat
parameters a worker runs, and the answer's shapes (typed stream events, the response
object); no I/O.

Input items become a chat conversation: ``instructions`` the system message, ``message``
items turns, ``function_call`` items an assistant's tool calls and
``function_call_output`` items tool results. ``reasoning`` items are skipped (these
models do not reason in hidden text). ``previous_response_id`` is resolved by the
gateway of the node that kept it (``_response_store``) before this runs: here it is
only echoed back.
"""

from __future__ import annotations

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
    _response_format,
    _unsupported,
)
from ._shapes import Ending, function_tool, sse_event

MAX_INPUT_ITEMS = 4096
MAX_TOOLS = 128

# Accepted and without effect on the answer.
_NO_EFFECT = frozenset(
    {
        "user",
        "store",
        "metadata",
        "service_tier",
        "parallel_tool_calls",
        "stream_options",
        "include",
        "truncation",
        "prompt_cache_key",
        "prompt_cache_retention",
        "safety_identifier",
        "max_tool_calls",
        "previous_response_id",
    }
)
_REJECTED = {
    "background": "this node answers in the foreground only",
    "conversation": "this node keeps no conversations; send the input, or previous_response_id",
    "prompt": "stored prompt templates are not kept here",
}
_TEXT_PARTS = frozenset({"input_text", "output_text", "text", "summary_text"})


def parse_responses(endpoint: str, body: dict[str, Any], raw: bytes) -> InferenceRequest:
    """Validate a Responses API body (already a JSON object) into an ``InferenceRequest``."""
    model = _model(body)
    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise _bad("'stream' must be a boolean", "stream", "invalid_type")
    for name, why in _REJECTED.items():
        if body.get(name) not in (None, False):
            raise _unsupported(name, why)
    top_logprobs = body.get("top_logprobs")
    if top_logprobs not in (None, 0):
        raise _unsupported("top_logprobs", "log probabilities are not returned")
    previous = body.get("previous_response_id")
    if previous is not None and not isinstance(previous, str):
        raise _bad(
            "'previous_response_id' must be a string", "previous_response_id", "invalid_type"
        )
    params: dict[str, Any] = {}
    for name, lo, hi in (("temperature", 0.0, 2.0), ("top_p", 0.0, 1.0)):
        _number(body, name, lo, hi, params)
    _positive_int(body, "max_output_tokens", "max_tokens", params)
    messages = _instructions(body.get("instructions")) + input_messages(body.get("input"))
    if not messages:
        raise _bad("'input' must not be empty", "input", "missing_required_parameter")
    params["messages"] = messages
    ignored = list(_tools(body, params))
    _text_format(body, params)
    params["shape"] = _echo(body)
    handled = {
        "model",
        "stream",
        "input",
        "instructions",
        "temperature",
        "top_p",
        "max_output_tokens",
        "tools",
        "tool_choice",
        "text",
        "top_logprobs",
        *_REJECTED,
    }
    ignored += [k for k in body if k not in handled and k not in _NO_EFFECT]
    return InferenceRequest("responses", model, stream, False, params, tuple(sorted(ignored)), raw)


def _instructions(value: Any) -> list[dict[str, Any]]:
    if value is None:
        return []
    if not isinstance(value, str):
        raise _bad("'instructions' must be a string", "instructions", "invalid_type")
    return [{"role": "system", "content": value}] if value else []


def _parts_text(content: Any, param: str) -> str:
    """A message item's content: a string, or a list of text parts joined by blank lines."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise _bad(f"'{param}' must be a string or a list of content parts", param, "invalid_type")
    texts: list[str] = []
    for i, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if not isinstance(kind, str):
            raise _bad(f"'{param}[{i}]' must be a content part with a 'type'", param)
        if kind == "refusal":
            text = part.get("refusal")
        elif kind in _TEXT_PARTS:
            text = part.get("text")
        else:
            raise _unsupported(f"{param}[{i}]", f"content of type {kind!r}; send text")
        if not isinstance(text, str):
            raise _bad(f"'{param}[{i}]' has no text", param, "invalid_type")
        texts.append(text)
    return "\n\n".join(texts)


def input_messages(value: Any) -> list[dict[str, Any]]:
    """The chat conversation of a Responses ``input``."""
    if value is None:
        raise _bad("'input' is required", "input", "missing_required_parameter")
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if not isinstance(value, list) or len(value) > MAX_INPUT_ITEMS:
        raise _bad(
            f"'input' must be a string or a list of at most {MAX_INPUT_ITEMS} items", "input"
        )
    out: list[dict[str, Any]] = []
    names: dict[str, str] = {}  # call_id -> function name
    for i, item in enumerate(value):
        param = f"input[{i}]"
        if not isinstance(item, dict):
            raise _bad(f"'{param}' must be an object", param, "invalid_type")
        kind = item.get("type", "message")
        if kind == "message":
            role = item.get("role")
            if role not in ("user", "assistant", "system", "developer"):
                raise _bad(f"'{param}.role' must be user, assistant, system or developer", param)
            content = _parts_text(item.get("content"), f"{param}.content")
            out.append({"role": "system" if role == "developer" else role, "content": content})
        elif kind == "function_call":
            call_id, name = _text(item, "call_id", param), _text(item, "name", param)
            arguments = item.get("arguments", "{}")
            if not isinstance(arguments, str):
                raise _bad(f"'{param}.arguments' must be a JSON string", param, "invalid_type")
            names[call_id] = name
            call = {
                "id": call_id,
                "type": "function",
                "function": {"name": name, "arguments": arguments},
            }
            last = out[-1] if out else None
            if last is not None and last["role"] == "assistant":
                last.setdefault("tool_calls", []).append(call)
            else:
                out.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            call_id = _text(item, "call_id", param)
            output = item.get("output")
            text = output if isinstance(output, str) else _parts_text(output, f"{param}.output")
            message = {"role": "tool", "tool_call_id": call_id, "content": text}
            if call_id in names:
                message["name"] = names[call_id]
            out.append(message)
        elif kind == "reasoning":
            continue
        else:
            raise _unsupported(
                f"{param}.type",
                f"input items of type {kind!r}; send message, function_call or "
                "function_call_output items",
            )
    return out


def _text(item: Mapping[str, Any], key: str, param: str) -> str:
    value = item.get(key)
    if not isinstance(value, str) or not value:
        raise _bad(f"'{param}.{key}' must be a non-empty string", param, "invalid_type")
    return value


def _tools(body: Mapping[str, Any], params: dict[str, Any]) -> list[str]:
    """Function tools into chat tools; the others (run by OpenAI's servers: web search,
    file search ...) are left out and named in the returned list."""
    tools = body.get("tools")
    choice = body.get("tool_choice")
    left_out: list[str] = []
    if tools is None or tools == []:
        if choice not in (None, "none", "auto"):
            raise _bad("'tool_choice' needs 'tools'", "tool_choice")
        return left_out
    if not isinstance(tools, list) or len(tools) > MAX_TOOLS:
        raise _bad(f"'tools' must be a list of at most {MAX_TOOLS} tools", "tools")
    functions: list[dict[str, Any]] = []
    for i, tool in enumerate(tools):
        kind = tool.get("type") if isinstance(tool, dict) else None
        if not isinstance(kind, str):
            raise _bad(f"'tools[{i}]' must be an object with a 'type'", "tools")
        if kind != "function":
            left_out.append(f"tools[{i}]:{kind}"[:64])
            continue
        assert isinstance(tool, dict)
        name, parameters = tool.get("name"), tool.get("parameters")
        if not isinstance(name, str) or not name:
            raise _bad(f"'tools[{i}].name' must be a non-empty string", "tools")
        if parameters is not None and not isinstance(parameters, dict):
            raise _bad(f"'tools[{i}].parameters' must be a JSON schema object", "tools")
        schema = parameters or {"type": "object"}
        functions.append(function_tool(name, schema, tool.get("description")))
    if functions:
        params["tools"] = functions
        if choice is not None:
            params["tool_choice"] = _tool_choice(choice, functions)
    return left_out


def _tool_choice(choice: Any, functions: list[dict[str, Any]]) -> Any:
    if choice in ("none", "auto", "required"):
        return choice
    if isinstance(choice, dict) and choice.get("type") == "function":
        name = choice.get("name")
        if not any(f["function"]["name"] == name for f in functions):
            raise _bad(f"'tool_choice' names {name!r}, which is not in 'tools'", "tool_choice")
        return {"type": "function", "function": {"name": name}}
    raise _bad(
        "'tool_choice' must be none, auto, required or {'type': 'function', 'name': ...}",
        "tool_choice",
    )


def _text_format(body: Mapping[str, Any], params: dict[str, Any]) -> None:
    text = body.get("text")
    if text is None:
        return
    if not isinstance(text, dict):
        raise _bad("'text' must be an object", "text", "invalid_type")
    fmt = text.get("format")
    if fmt is None:
        return
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        # Responses puts the schema beside the type; chat nests it under json_schema.
        fmt = {"type": "json_schema", "json_schema": {"schema": fmt.get("schema")}}
    try:
        _response_format({"response_format": fmt}, params)
    except ApiError as exc:
        raise _bad(exc.message.replace("response_format", "text.format"), "text") from None


def _echo(body: Mapping[str, Any]) -> dict[str, Any]:
    """What the response object repeats of its request."""
    tools = [t for t in body.get("tools") or [] if isinstance(t, dict)]
    return {
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "temperature": body.get("temperature"),
        "top_p": body.get("top_p"),
        "tools": tools,
        "tool_choice": body.get("tool_choice", "auto"),
        "parallel_tool_calls": body.get("parallel_tool_calls", True),
        "previous_response_id": body.get("previous_response_id"),
        "metadata": body.get("metadata") if isinstance(body.get("metadata"), dict) else {},
        "store": body.get("store", True),
        "text": body.get("text")
        if isinstance(body.get("text"), dict)
        else {"format": {"type": "text"}},
        "truncation": body.get("truncation", "disabled"),
        "user": body.get("user"),
    }


def _hex() -> str:
    return uuid.uuid4().hex


class ResponsesShaper:
    """One Responses API answer: the response object and its typed stream events."""

    style: ErrorStyle = "openai"

    def __init__(self, model: str, shape: Mapping[str, Any], *, now: int) -> None:
        self.model = model
        self.shape = dict(shape)
        self.created = now
        self.id = f"resp_{_hex()}"
        self.message_id = f"msg_{_hex()}"
        self.sequence = 0
        self.text = ""
        self.message_open = False
        self.prompt_tokens = 0

    def _event(self, kind: str, **fields: Any) -> bytes:
        event = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return sse_event(kind, event)

    def response(
        self, status: str, output: list[dict[str, Any]], end: Ending | None = None
    ) -> dict[str, Any]:
        incomplete = (
            {"reason": "max_output_tokens"} if end is not None and end.reason == "length" else None
        )
        out = {
            "id": self.id,
            "object": "response",
            "created_at": self.created,
            "status": status,
            "error": None,
            "incomplete_details": incomplete,
            "model": self.model,
            "output": output,
            **self.shape,
            "usage": None
            if end is None
            else {
                "input_tokens": end.prompt_tokens,
                "input_tokens_details": {"cached_tokens": 0},
                "output_tokens": end.completion_tokens,
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": end.prompt_tokens + end.completion_tokens,
            },
        }
        return out

    def _message(self, status: str, text: str | None) -> dict[str, Any]:
        content = [] if text is None else [_output_text(text)]
        return {
            "id": self.message_id,
            "type": "message",
            "status": status,
            "role": "assistant",
            "content": content,
        }

    def opening(self, prompt_tokens: int) -> list[bytes]:
        self.prompt_tokens = prompt_tokens
        start = self.response("in_progress", [])
        return [
            self._event("response.created", response=start),
            self._event("response.in_progress", response=start),
        ]

    def _open_message(self) -> list[bytes]:
        self.message_open = True
        return [
            self._event(
                "response.output_item.added",
                output_index=0,
                item=self._message("in_progress", None),
            ),
            self._event(
                "response.content_part.added",
                item_id=self.message_id,
                output_index=0,
                content_index=0,
                part=_output_text(""),
            ),
        ]

    def delta(self, text: str) -> list[bytes]:
        frames = [] if self.message_open else self._open_message()
        self.text += text
        frames.append(
            self._event(
                "response.output_text.delta",
                item_id=self.message_id,
                output_index=0,
                content_index=0,
                delta=text,
                logprobs=[],
            )
        )
        return frames

    def closing(self, end: Ending) -> list[bytes]:
        frames: list[bytes] = []
        output: list[dict[str, Any]] = []
        if self.message_open or not end.tool_calls:
            if not self.message_open:
                frames += self._open_message()
            ids = {"item_id": self.message_id, "output_index": 0, "content_index": 0}
            frames.append(
                self._event("response.output_text.done", **ids, text=self.text, logprobs=[])
            )
            frames.append(
                self._event("response.content_part.done", **ids, part=_output_text(self.text))
            )
            message = self._message("completed", self.text)
            frames.append(self._event("response.output_item.done", output_index=0, item=message))
            output.append(message)
        for call in end.tool_calls:
            index = len(output)
            item = _function_call(call)
            frames.append(
                self._event(
                    "response.output_item.added",
                    output_index=index,
                    item={**item, "status": "in_progress", "arguments": ""},
                )
            )
            ids = {"item_id": item["id"], "output_index": index}
            frames.append(
                self._event(
                    "response.function_call_arguments.delta", **ids, delta=item["arguments"]
                )
            )
            frames.append(
                self._event(
                    "response.function_call_arguments.done", **ids, arguments=item["arguments"]
                )
            )
            frames.append(self._event("response.output_item.done", output_index=index, item=item))
            output.append(item)
        status = "incomplete" if end.reason == "length" else "completed"
        final = self.response(status, output, end)
        frames.append(self._event(f"response.{status}", response=final))
        return frames

    def failure(self, error: ApiError) -> bytes:
        return self._event("error", code=error.code, message=error.message, param=error.param)

    def body(self, end: Ending) -> dict[str, Any]:
        output: list[dict[str, Any]] = []
        if end.text or not end.tool_calls:
            output.append(self._message("completed", end.text))
        output += [_function_call(call) for call in end.tool_calls]
        return self.response("incomplete" if end.reason == "length" else "completed", output, end)


def _output_text(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _function_call(call: Mapping[str, Any]) -> dict[str, Any]:
    function = call["function"]
    call_id = str(call["id"])
    return {
        "id": "fc_" + call_id.removeprefix("call_"),
        "type": "function_call",
        "status": "completed",
        "call_id": call_id,
        "name": function["name"],
        "arguments": function["arguments"],
    }
