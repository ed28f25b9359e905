"""Tool calls for models whose chat template knows no tools: pure text functions.

The tools are described in a system message; the model calls one by writing

    <tool_call>{"name": "get_weather", "arguments": {"city": "Oslo"}}</tool_call>

and everything after ``<tool_call>`` is generated under a llama.cpp grammar made from
the tools' JSON schemas, so the call is valid JSON naming a real tool with arguments
its schema allows. With ``tool_choice`` ``auto`` the model chooses (the grammar starts
when it writes ``<tool_call>``); with ``required`` or a named function the answer *is*
a call (the prompt ends in ``<tool_call>`` and the grammar holds from the first token).
``_toolcalls.parse_tool_calls`` reads the call back like a Hermes template's.

Earlier calls and their results go into the conversation as text: an assistant's call
in the same ``<tool_call>`` form, a result as a turn of its own (``Tool:`` in a plain
transcript, a user turn saying which function returned it under a GGUF template, whose
turns must alternate).

One call per answer: an emulated model does not issue parallel calls.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..api._openai import ApiError

CALL_OPEN = "<tool_call>"
CALL_CLOSE = "</tool_call>"


@dataclass(frozen=True)
class ToolEmulation:
    """How one request's tools are emulated."""

    messages: list[dict[str, Any]]
    """The conversation as the chat template renders it: tools described, calls as text."""
    grammar: str
    """GBNF for what follows ``CALL_OPEN``: a call's JSON, then ``CALL_CLOSE``."""
    forced: bool
    """The answer must be a call (``required``, or a named function)."""


def _function(tool: Mapping[str, Any]) -> Mapping[str, Any]:
    function = tool.get("function")
    return function if isinstance(function, Mapping) else {}


def _parameters(function: Mapping[str, Any]) -> dict[str, Any]:
    parameters = function.get("parameters")
    return dict(parameters) if isinstance(parameters, Mapping) else {"type": "object"}


def allowed_tools(tools: Sequence[Mapping[str, Any]], choice: Any) -> list[Mapping[str, Any]]:
    """The tools a call may name: all, or the one ``tool_choice`` names (400 if absent)."""
    if isinstance(choice, Mapping):
        name = _function(choice).get("name")
        chosen = [t for t in tools if _function(t).get("name") == name]
        if not chosen:
            raise ApiError(
                400, f"'tool_choice' names {name!r}, which is not in 'tools'", param="tool_choice"
            )
        return chosen
    return list(tools)


def instructions(tools: Sequence[Mapping[str, Any]], forced: bool) -> str:
    """The system text that teaches a model the call format and lists the functions."""
    lines = [
        "You can call functions. To call one, write exactly:",
        f'{CALL_OPEN}{{"name": "<function name>", "arguments": {{<arguments>}}}}{CALL_CLOSE}',
        "with the arguments as a JSON object that follows the function's parameters. "
        "The function's result comes back in the next turn.",
        "Call one of them now."
        if forced
        else "Call a function only when it helps; otherwise answer in plain text.",
        "",
        "Functions:",
    ]
    for tool in tools:
        function = _function(tool)
        entry: dict[str, Any] = {"name": function.get("name")}
        if isinstance(function.get("description"), str):
            entry["description"] = function["description"]
        entry["parameters"] = _parameters(function)
        lines.append(json.dumps(entry, ensure_ascii=False))
    return "\n".join(lines)


def call_text(name: str, arguments: str) -> str:
    """A call as the model writes it."""
    try:
        parsed: Any = json.loads(arguments)
    except (ValueError, RecursionError):
        parsed = arguments
    body = json.dumps({"name": name, "arguments": parsed}, ensure_ascii=False)
    return f"{CALL_OPEN}{body}{CALL_CLOSE}"


def rewrite_messages(
    messages: Sequence[Mapping[str, Any]], system: str | None, *, alternate: bool
) -> list[dict[str, Any]]:
    """The conversation with ``system`` first (if any), calls as text and results as turns.

    ``alternate``: the template wants user and assistant turns in turn (GGUF templates
    such as Gemma's): results become user turns, and neighbours of one role are joined.
    """
    names: dict[str, str] = {}
    out: list[dict[str, Any]] = []
    for message in messages:
        role = str(message.get("role"))
        content = message.get("content") or ""
        if role == "assistant" and message.get("tool_calls"):
            calls = []
            for call in message["tool_calls"]:
                function = call.get("function", {}) if isinstance(call, Mapping) else {}
                name = str(function.get("name", ""))
                if isinstance(call, Mapping) and isinstance(call.get("id"), str):
                    names[call["id"]] = name
                calls.append(call_text(name, str(function.get("arguments", "{}"))))
            content = (content + "\n" if content else "") + "".join(calls)
        elif role in ("tool", "function"):
            name = message.get("name") or names.get(str(message.get("tool_call_id")), "")
            content = f"{name} returned: {content}" if name else f"The function returned: {content}"
            role = "user" if alternate else "tool"
        out.append({"role": role, "content": content})
    if system is None:
        pass
    elif out and out[0]["role"] == "system":
        out[0] = {"role": "system", "content": system + "\n\n" + out[0]["content"]}
    else:
        out.insert(0, {"role": "system", "content": system})
    if not alternate:
        return out
    joined: list[dict[str, Any]] = []
    for message in out:
        if joined and joined[-1]["role"] == message["role"]:
            joined[-1] = {
                **joined[-1],
                "content": joined[-1]["content"] + "\n\n" + message["content"],
            }
        else:
            joined.append(message)
    return joined


def call_grammar(tools: Sequence[Mapping[str, Any]]) -> str:
    """GBNF for a call's JSON (a tool's name and arguments its schema allows), then
    ``CALL_CLOSE``. A schema llama.cpp's converter cannot take gets any JSON object."""
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    def alternative(name: Any, parameters: dict[str, Any]) -> dict[str, Any]:
        return {
            "type": "object",
            "properties": {"name": {"const": name}, "arguments": parameters},
            "required": ["name", "arguments"],
            "additionalProperties": False,
        }

    alternatives = []
    for tool in tools:
        function = _function(tool)
        candidate = alternative(function.get("name"), _parameters(function))
        try:
            json_schema_to_gbnf(json.dumps(candidate), prop_order=["name", "arguments"])
        except Exception:  # the converter raises what it likes on schemas it cannot take
            candidate = alternative(function.get("name"), {"type": "object"})
        alternatives.append(candidate)
    schema = alternatives[0] if len(alternatives) == 1 else {"anyOf": alternatives}
    grammar: str = json_schema_to_gbnf(json.dumps(schema), prop_order=["name", "arguments"])
    grammar = grammar.replace("root ::=", "tool-call ::=", 1)
    return grammar + f'\nroot ::= tool-call "{CALL_CLOSE}"\n'


def any_call_grammar(tools: Sequence[Mapping[str, Any]]) -> str:
    """A looser grammar when ``call_grammar``'s does not load: a known name, any object."""
    names = [_function(t).get("name") for t in tools]
    return call_grammar(
        [{"function": {"name": n, "parameters": {"type": "object"}}} for n in names]
    )


def has_tool_turns(messages: Sequence[Mapping[str, Any]]) -> bool:
    """Whether a conversation holds calls or results (which a template without tools
    cannot render: ``rewrite_messages`` writes them as text)."""
    return any(m.get("tool_calls") or m.get("role") in ("tool", "function") for m in messages)


def emulate_tools(
    messages: Sequence[Mapping[str, Any]],
    tools: Sequence[Mapping[str, Any]],
    choice: Any,
    *,
    alternate: bool,
) -> ToolEmulation:
    """How to run a request with ``tools`` (and ``tool_choice`` other than none)."""
    allowed = allowed_tools(tools, choice)
    forced = choice == "required" or isinstance(choice, Mapping)
    system = instructions(allowed, forced)
    return ToolEmulation(
        rewrite_messages(messages, system, alternate=alternate), call_grammar(allowed), forced
    )
