"""OpenAI API shapes: request validation, response objects and error bodies; no I/O.

The gateway turns a request body into a normalised dict that an inference
worker can pass straight to llama.cpp, or into an ``ApiError`` with OpenAI's
error shape. Keeping this pure lets the same rules run wherever a request
enters the mesh.
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from ._resume import Resume

Endpoint = Literal["chat", "completion", "responses", "messages", "count_tokens", "embeddings"]
"""``chat`` /v1/chat/completions, ``completion`` /v1/completions, ``responses`` /v1/responses,
``messages`` /v1/messages, ``count_tokens`` /v1/messages/count_tokens, ``embeddings``
/v1/embeddings."""

ErrorStyle = Literal["openai", "anthropic"]
"""The shape of an error body: OpenAI's ``{"error": {...}}`` or Anthropic's
``{"type": "error", "error": {...}}``."""

#: Endpoints whose requests are conversations (a chat template renders them).
CHAT_LIKE: frozenset[str] = frozenset({"chat", "responses", "messages", "count_tokens"})


def error_style(endpoint: str) -> ErrorStyle:
    """How ``endpoint`` writes its errors: Anthropic's shape for its Messages API."""
    return "anthropic" if endpoint in ("messages", "count_tokens") else "openai"


class ApiError(Exception):
    """An error answered to an API client as ``{"error": {...}}`` with an HTTP status."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = dict(headers or {})

    def body(self, style: ErrorStyle = "openai") -> dict[str, Any]:
        if style == "anthropic":
            from ._anthropic import anthropic_error_body  # it builds on this module

            return anthropic_error_body(self.status, self.message)
        return error_body(self.message, type=self.type, param=self.param, code=self.code)


def error_body(
    message: str,
    *,
    type: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
) -> dict[str, Any]:
    """The JSON body OpenAI uses for errors, also sent as an SSE event mid-stream."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def model_not_found(model: str, served: list[str]) -> ApiError:
    listed = ", ".join(served) if served else "none"
    return ApiError(
        404,
        f"model {model!r} is not served by this mesh; served: {listed}",
        param="model",
        code="model_not_found",
    )


@dataclass(frozen=True)
class InferenceRequest:
    """A validated request: which endpoint, which model, and the llama.cpp arguments."""

    endpoint: Endpoint
    model: str
    stream: bool
    include_usage: bool
    params: dict[str, Any]
    ignored: tuple[str, ...] = field(default=())
    #: The client's JSON body as received: what /mesh/route carries to another node,
    #: which validates it again (a member is trusted no more than a local client).
    body: bytes = field(default=b"", repr=False, compare=False)
    #: Ask the host for progress comments, to resume elsewhere if it breaks off
    #: (chat and completion; ``_resume``).
    progress: bool = False
    #: Go on with an answer another host broke off.
    resume: Resume | None = field(default=None, repr=False)

    def to_worker_json(self) -> bytes:
        """The body sent to an inference worker: already validated, nothing to re-check."""
        worker: dict[str, Any] = {
            "endpoint": self.endpoint,
            "model": self.model,
            "stream": self.stream,
            "include_usage": self.include_usage,
            "params": self.params,
        }
        if self.progress:
            worker["progress"] = True
        if self.resume is not None:
            worker["resume"] = self.resume.to_json()
        return json.dumps(worker, separators=(",", ":")).encode()


# Fields that are accepted and have no effect on the generated answer.
_NO_EFFECT = frozenset(
    {"user", "store", "metadata", "service_tier", "parallel_tool_calls", "stream_options"}
)

_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
_MAX_STOP = 4
_MAX_TOOLS = 128


def _bad(message: str, param: str, code: str | None = "invalid_value") -> ApiError:
    return ApiError(400, message, param=param, code=code)


def _unsupported(param: str, why: str) -> ApiError:
    return ApiError(400, f"{param!r} is not supported: {why}", param=param, code="unsupported")


def _number(body: Mapping[str, Any], name: str, lo: float, hi: float, out: dict[str, Any]) -> None:
    value = body.get(name)
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _bad(f"{name!r} must be a number", name, "invalid_type")
    if isinstance(value, float) and not math.isfinite(value):
        raise _bad(f"{name!r} must be a finite number", name, "invalid_type")
    if not lo <= value <= hi:
        raise _bad(f"{name!r} must be between {lo:g} and {hi:g}, got {value}", name)
    out[name] = value


def _positive_int(body: Mapping[str, Any], name: str, out_name: str, out: dict[str, Any]) -> None:
    value = body.get(name)
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad(f"{name!r} must be an integer", name, "invalid_type")
    if value < 1:
        raise _bad(f"{name!r} must be at least 1, got {value}", name)
    out[out_name] = value


def _stop(body: Mapping[str, Any], out: dict[str, Any]) -> None:
    stop = body.get("stop")
    if stop is None:
        return
    if isinstance(stop, str):
        out["stop"] = [stop]
        return
    if (
        not isinstance(stop, list)
        or not all(isinstance(s, str) for s in stop)
        or len(stop) > _MAX_STOP
    ):
        raise _bad(f"'stop' must be a string or a list of at most {_MAX_STOP} strings", "stop")
    out["stop"] = list(stop)


def _seed(body: Mapping[str, Any], out: dict[str, Any]) -> None:
    seed = body.get("seed")
    if seed is None:
        return
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise _bad("'seed' must be an integer", "seed", "invalid_type")
    # llama.cpp takes a 32-bit seed; OpenAI accepts 64-bit ones. Fold, don't reject.
    out["seed"] = seed & 0xFFFFFFFF


def _logit_bias(body: Mapping[str, Any], out: dict[str, Any]) -> None:
    bias = body.get("logit_bias")
    if bias is None:
        return
    if not isinstance(bias, dict):
        raise _bad("'logit_bias' must be an object of token id to bias", "logit_bias")
    parsed: dict[int, float] = {}
    for key, value in bias.items():
        try:
            token = int(key)
        except (TypeError, ValueError):
            raise _bad(f"'logit_bias' key {key!r} is not a token id", "logit_bias") from None
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not -100 <= value <= 100
        ):
            raise _bad("'logit_bias' values must be numbers between -100 and 100", "logit_bias")
        parsed[token] = float(value)
    out["logit_bias"] = parsed


def _stream(body: Mapping[str, Any]) -> tuple[bool, bool]:
    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise _bad("'stream' must be a boolean", "stream", "invalid_type")
    options = body.get("stream_options")
    include_usage = False
    if options is not None:
        if not isinstance(options, dict):
            raise _bad("'stream_options' must be an object", "stream_options", "invalid_type")
        if not stream:
            raise _bad("'stream_options' is only allowed when 'stream' is true", "stream_options")
        usage = options.get("include_usage", False)
        if not isinstance(usage, bool):
            raise _bad("'stream_options.include_usage' must be a boolean", "stream_options")
        include_usage = usage
    return stream, include_usage


def _single_choice(body: Mapping[str, Any]) -> None:
    for name in ("n", "best_of"):
        value = body.get(name)
        if value is None or value == 1:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise _bad(f"{name!r} must be a positive integer", name, "invalid_type")
        raise _unsupported(name, "this node generates one choice per request; send 1")


def _model(body: Mapping[str, Any]) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _bad(
            "'model' is required and must be a string", "model", "missing_required_parameter"
        )
    return model


def _content_text(content: Any, param: str) -> str | None:
    if content is None:
        return None
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts: list[str] = []
        for i, part in enumerate(content):
            if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                raise _bad(f"'{param}[{i}]' must be a content part object", param)
            if part["type"] != "text":
                raise _unsupported(f"{param}[{i}]", f"content of type {part['type']!r}; send text")
            text = part.get("text")
            if not isinstance(text, str):
                raise _bad(f"'{param}[{i}].text' must be a string", param)
            parts.append(text)
        return "".join(parts)
    raise _bad(f"'{param}' must be a string or a list of text parts", param, "invalid_type")


def _messages(body: Mapping[str, Any]) -> list[dict[str, Any]]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _bad("'messages' must be a non-empty list", "messages", "missing_required_parameter")
    out: list[dict[str, Any]] = []
    for i, message in enumerate(messages):
        param = f"messages[{i}]"
        if not isinstance(message, dict):
            raise _bad(f"'{param}' must be an object", param, "invalid_type")
        role = message.get("role")
        if not isinstance(role, str) or role not in _ROLES:
            raise _bad(f"'{param}.role' must be one of {', '.join(sorted(_ROLES))}", param)
        norm: dict[str, Any] = {
            # Chat templates know "system"; "developer" is OpenAI's newer name for it.
            "role": "system" if role == "developer" else role,
            "content": _content_text(message.get("content"), f"{param}.content"),
        }
        if norm["content"] is None and not message.get("tool_calls"):
            raise _bad(f"'{param}.content' is required", f"{param}.content")
        for key in ("name", "tool_call_id"):
            if isinstance(message.get(key), str):
                norm[key] = message[key]
        tool_calls = message.get("tool_calls")
        if tool_calls is not None:
            if role != "assistant" or not isinstance(tool_calls, list):
                raise _bad(f"'{param}.tool_calls' must be a list on an assistant message", param)
            norm["tool_calls"] = tool_calls
        out.append(norm)
    return out


def _tools(body: Mapping[str, Any], out: dict[str, Any]) -> None:
    tools = body.get("tools")
    functions = body.get("functions")
    if tools is None and functions is not None:
        # The legacy `functions` field is the same thing under an older name.
        if not isinstance(functions, list):
            raise _bad("'functions' must be a list", "functions", "invalid_type")
        tools = [{"type": "function", "function": f} for f in functions]
    choice = body.get("tool_choice", body.get("function_call"))
    if not tools:
        if choice not in (None, "none"):
            raise _bad("'tool_choice' needs 'tools'", "tool_choice")
        return
    # Every model takes tools: where its chat template has none, the worker emulates
    # them (inference/_toolemu.py).
    if not isinstance(tools, list) or len(tools) > _MAX_TOOLS:
        raise _bad(f"'tools' must be a list of at most {_MAX_TOOLS} tools", "tools")
    for i, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, dict) else None
        if (
            not isinstance(tool, dict)
            or tool.get("type") != "function"
            or not isinstance(function, dict)
            or not isinstance(function.get("name"), str)
        ):
            raise _bad(
                f"'tools[{i}]' must be {{'type': 'function', 'function': {{'name'...}}}}", "tools"
            )
    out["tools"] = tools
    if choice is not None:
        if choice not in ("none", "auto", "required") and not (
            isinstance(choice, dict) and isinstance(choice.get("function"), dict)
        ):
            raise _bad("'tool_choice' must be none, auto, required or a function", "tool_choice")
        out["tool_choice"] = choice


def _response_format(body: Mapping[str, Any], out: dict[str, Any]) -> None:
    fmt = body.get("response_format")
    if fmt is None:
        return
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind == "text":
        return
    if kind == "json_object":
        out["response_format"] = {"type": "json_object"}
        return
    if kind == "json_schema":
        schema = fmt.get("json_schema", {})
        if not isinstance(schema, dict) or not isinstance(schema.get("schema"), dict):
            raise _bad("'response_format.json_schema.schema' must be an object", "response_format")
        out["response_format"] = {"type": "json_object", "schema": schema["schema"]}
        return
    raise _bad("'response_format.type' must be text, json_object or json_schema", "response_format")


_CHAT_REJECTED: dict[str, str] = {
    "audio": "this node produces text only",
    "prediction": "predicted outputs are not implemented",
    "web_search_options": "this node has no web search",
}


def parse_request(
    endpoint: Endpoint,
    raw: bytes,
    *,
    tools_supported: Callable[[str], bool] = lambda _model: False,
) -> InferenceRequest:
    """Validate an API request body; raise ``ApiError`` (400) naming the bad field.

    ``tools_supported`` is no longer consulted: every model takes tools (emulated by the
    worker where its chat template has none). It stays for callers that pass it.
    """
    body = json_object(raw)
    if endpoint in ("responses", "messages", "count_tokens", "embeddings"):
        # Imported here: those modules build on this one's helpers.
        from ._anthropic import parse_messages
        from ._embeddings import parse_embeddings
        from ._responses import parse_responses

        parsers = {
            "responses": parse_responses,
            "messages": parse_messages,
            "count_tokens": parse_messages,
            "embeddings": parse_embeddings,
        }
        return parsers[endpoint](endpoint, body, raw)
    model = _model(body)
    stream, include_usage = _stream(body)
    _single_choice(body)
    params: dict[str, Any] = {}
    handled = {"model", "stream", "n", "best_of"}

    for name, lo, hi in (
        ("temperature", 0.0, 2.0),
        ("top_p", 0.0, 1.0),
        ("presence_penalty", -2.0, 2.0),
        ("frequency_penalty", -2.0, 2.0),
    ):
        _number(body, name, lo, hi, params)
        handled.add(name)
    _stop(body, params)
    _seed(body, params)
    _logit_bias(body, params)
    handled |= {"stop", "seed", "logit_bias"}

    if endpoint == "chat":
        for name, why in _CHAT_REJECTED.items():
            if body.get(name) is not None:
                raise _unsupported(name, why)
        modalities = body.get("modalities")
        if modalities is not None and modalities != ["text"]:
            raise _unsupported("modalities", "this node produces text only")
        params["messages"] = _messages(body)
        # max_completion_tokens is the newer name; either bounds the answer.
        _positive_int(body, "max_tokens", "max_tokens", params)
        _positive_int(body, "max_completion_tokens", "max_tokens", params)
        _tools(body, params)
        _response_format(body, params)
        if body.get("logprobs"):
            raise _unsupported("logprobs", "log probabilities are not returned for chat")
        handled |= {
            "messages",
            "max_tokens",
            "max_completion_tokens",
            "tools",
            "tool_choice",
            "functions",
            "function_call",
            "response_format",
            "logprobs",
            "top_logprobs",
            "modalities",
            *_CHAT_REJECTED,
        }
    else:
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        if (
            isinstance(prompt, list)
            and prompt
            and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt)
        ) or isinstance(prompt, str):
            params["prompt"] = prompt
        elif isinstance(prompt, list):
            raise _unsupported("prompt", "send one prompt per request (a string or a token list)")
        else:
            raise _bad("'prompt' is required: a string or a list of token ids", "prompt")
        # OpenAI's documented default for completions.
        params["max_tokens"] = 16
        _positive_int(body, "max_tokens", "max_tokens", params)
        echo = body.get("echo")
        if echo is not None:
            if not isinstance(echo, bool):
                raise _bad("'echo' must be a boolean", "echo", "invalid_type")
            params["echo"] = echo
        if body.get("suffix") is not None:
            raise _unsupported("suffix", "fill-in-the-middle is not implemented")
        if body.get("logprobs") is not None:
            raise _unsupported("logprobs", "log probabilities are not returned")
        handled |= {"prompt", "max_tokens", "suffix", "echo", "logprobs"}

    ignored = tuple(sorted(k for k in body if k not in handled and k not in _NO_EFFECT))
    return InferenceRequest(endpoint, model, stream, include_usage, params, ignored, raw)


def json_object(raw: bytes) -> dict[str, Any]:
    """A request body parsed as a JSON object; ApiError (400) otherwise."""
    try:
        body = json.loads(raw)
    except RecursionError:
        raise ApiError(400, "request body is nested too deeply", code="invalid_json") from None
    # ValueError covers JSONDecodeError and integers past Python's digit limit.
    except (UnicodeDecodeError, ValueError) as exc:
        raise ApiError(400, f"request body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise ApiError(400, "request body must be a JSON object", code="invalid_json")
    return body


class ResponseShaper:
    """Builds OpenAI response objects for one request, streamed or not."""

    def __init__(self, endpoint: Endpoint, model: str, include_usage: bool, *, now: int) -> None:
        self.endpoint = endpoint
        self.model = model
        self.include_usage = include_usage
        self.created = now
        prefix = "chatcmpl" if endpoint == "chat" else "cmpl"
        self.id = f"{prefix}-{uuid.uuid4().hex}"
        self._object = "chat.completion" if endpoint == "chat" else "text_completion"

    def _envelope(self, obj: str) -> dict[str, Any]:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model}

    def _chunk(self, choice: dict[str, Any]) -> dict[str, Any]:
        chunk = self._envelope(
            "chat.completion.chunk" if self.endpoint == "chat" else "text_completion"
        )
        chunk["choices"] = [choice]
        if self.include_usage:
            chunk["usage"] = None
        return chunk

    def first_chunk(self) -> dict[str, Any] | None:
        """Chat streams open with the assistant role, as OpenAI's do."""
        if self.endpoint != "chat":
            return None
        return self._chunk(
            {
                "index": 0,
                "delta": {"role": "assistant", "content": ""},
                "logprobs": None,
                "finish_reason": None,
            }
        )

    def delta_chunk(self, text: str) -> dict[str, Any]:
        if self.endpoint == "chat":
            choice = {
                "index": 0,
                "delta": {"content": text},
                "logprobs": None,
                "finish_reason": None,
            }
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": None}
        return self._chunk(choice)

    def final_chunks(
        self,
        reason: str,
        usage: dict[str, int],
        tool_calls: list[dict[str, Any]] | None = None,
    ) -> list[dict[str, Any]]:
        chunks: list[dict[str, Any]] = []
        if self.endpoint == "chat":
            if tool_calls:
                chunks.append(
                    self._chunk(
                        {
                            "index": 0,
                            "delta": {"tool_calls": tool_calls},
                            "logprobs": None,
                            "finish_reason": None,
                        }
                    )
                )
            chunks.append(
                self._chunk({"index": 0, "delta": {}, "logprobs": None, "finish_reason": reason})
            )
        else:
            chunks.append(
                self._chunk({"index": 0, "text": "", "logprobs": None, "finish_reason": reason})
            )
        if self.include_usage:
            last = self._envelope(chunks[-1]["object"])
            last["choices"] = []
            last["usage"] = usage
            chunks.append(last)
        return chunks

    def response(
        self,
        text: str,
        reason: str,
        usage: dict[str, int],
        tool_calls: list[dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        body = self._envelope(self._object)
        if self.endpoint == "chat":
            message: dict[str, Any] = {"role": "assistant", "content": text or None}
            if tool_calls:
                message["tool_calls"] = tool_calls
            elif message["content"] is None:
                message["content"] = ""
            body["choices"] = [
                {"index": 0, "message": message, "logprobs": None, "finish_reason": reason}
            ]
        else:
            body["choices"] = [
                {"index": 0, "text": text, "logprobs": None, "finish_reason": reason}
            ]
        body["usage"] = usage
        return body


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def sse(obj: Any) -> bytes:
    """One server-sent event carrying ``obj`` as JSON."""
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


SSE_DONE = b"data: [DONE]\n\n"
