"""Finding tool calls in generated text: pure functions, no model needed.

Chat templates with tool support make models answer a call in one of a few
shapes. We recognise the common ones and turn them into OpenAI ``tool_calls``:

- Hermes / Qwen: ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``
- Llama 3.x and others: a bare JSON object ``{"name": ..., "parameters": {...}}``
  (or a list of them) as the whole answer.
- Mistral: ``[TOOL_CALLS] [{"name": ..., "arguments": {...}}]``
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from typing import Any

_HERMES = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.DOTALL)
_MISTRAL = "[TOOL_CALLS]"


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # a JSON text, as OpenAI sends it

    def to_openai(self, index: int | None = None) -> dict[str, Any]:
        call: dict[str, Any] = {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        }
        if index is not None:
            call["index"] = index
        return call


def _as_call(obj: Any, *, marked: bool) -> ToolCall | None:
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None
    if not marked and "arguments" not in obj and "parameters" not in obj:
        # Unmarked JSON is a call only in the call shape; {"name": "Ada", "age": 36}
        # is an answer (say, to a JSON response_format), not a call of "Ada".
        return None
    args = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(args, str):
        try:
            json.loads(args)
        except (json.JSONDecodeError, RecursionError):
            return None
        text = args
    elif isinstance(args, dict):
        text = json.dumps(args, ensure_ascii=False)
    else:
        return None
    return ToolCall(f"call_{uuid.uuid4().hex[:24]}", obj["name"], text)


def _calls_from_json(text: str, *, marked: bool) -> list[ToolCall] | None:
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        # A model can emit "[[[[..." deeper than the json module recurses; not a call.
        return None
    items = value if isinstance(value, list) else [value]
    calls = [_as_call(item, marked=marked) for item in items]
    if not calls or any(c is None for c in calls):
        return None
    return [c for c in calls if c is not None]


def parse_tool_calls(text: str) -> tuple[str, list[ToolCall]]:
    """Split generated text into (remaining content, tool calls). No calls: (text, [])."""
    matches = list(_HERMES.finditer(text))
    if matches:
        calls: list[ToolCall] = []
        for match in matches:
            found = _calls_from_json(match.group(1), marked=True)
            if found is None:
                return text, []
            calls.extend(found)
        return _HERMES.sub("", text).strip(), calls
    stripped = text.strip()
    if stripped.startswith(_MISTRAL):
        found = _calls_from_json(stripped[len(_MISTRAL) :].strip(), marked=True)
        return ("", found) if found else (text, [])
    if stripped.startswith(("{", "[")):
        found = _calls_from_json(stripped, marked=False)
        if found:
            return "", found
    return text, []
