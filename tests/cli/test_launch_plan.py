"""``meshp2p launch``'s decisions, without a node: words, the API address, the model."""

from __future__ import annotations

import argparse
from typing import Any

import pytest
from meshp2p_cli.launch import Target, api_base, choose_model, describe, parse_words, plan_claude

from meshp2p import MeshError


def test_the_agents_arguments_are_everything_after_the_first_double_dash() -> None:
    options, rest = parse_words(["codex", "--print", "--", "exec", "--model", "x", "--"])
    assert (options.agent, options.print_only, options.model) == ("codex", True, None)
    assert rest == ["exec", "--model", "x", "--"]


def test_options_before_the_agents_name_count_unless_repeated_after_it() -> None:
    given = argparse.Namespace(model="a", print_only=True)
    options, _ = parse_words(["pi", "--model", "b"], given)
    assert (options.model, options.print_only) == ("b", True)


@pytest.mark.parametrize(
    ("url", "base"),
    [
        ("http://127.0.0.1:9337/v1", "http://127.0.0.1:9337/v1"),
        ("http://0.0.0.0:9337/v1", "http://127.0.0.1:9337/v1"),
        ("http://[::]:9337/v1/", "http://[::1]:9337/v1"),
        ("http://192.0.2.7:9400/v1", "http://192.0.2.7:9400/v1"),
    ],
)
def test_a_wildcard_api_address_is_reached_on_loopback(url: str, base: str) -> None:
    assert api_base({"api_url": url}) == base


def model(name: str, state: str = "ready", nodes: int = 1) -> dict[str, Any]:
    return {"id": name, "meshp2p": {"state": state, "nodes": [f"n{i}" for i in range(nodes)]}}


def test_the_largest_ready_model_is_chosen_then_the_most_hosted() -> None:
    status = {
        "peers": [
            {"models_on_disk": [{"name": "big", "size": 9}, {"name": "mid", "size": 5}]},
        ]
    }
    models = [model("small", nodes=3), model("mid"), model("big", state="loading")]
    assert choose_model(models, status, None) == "mid"
    assert choose_model([model("a"), model("b", nodes=2)], {}, None) == "b"
    assert choose_model(models, status, "SMALL") == "small"


@pytest.mark.parametrize(
    ("models", "asked", "message"),
    [
        ([], None, "serves no model yet"),
        ([model("a", state="loading")], None, "a: loading"),
        ([model("a")], "b", "served: a"),
    ],
)
def test_no_model_to_choose_is_said_so(
    models: list[dict[str, Any]], asked: str | None, message: str
) -> None:
    with pytest.raises(MeshError, match=message):
        choose_model(models, {}, asked)


def test_printed_lines_quote_what_a_shell_would_split() -> None:
    target = Target("http://127.0.0.1:9337/v1", "my model", "k'ey")
    printed = describe(plan_claude(target, ["-p", "two words"]), target, "http://c")
    assert "export ANTHROPIC_MODEL='my model'" in printed
    assert "export ANTHROPIC_AUTH_TOKEN='k'\"'\"'ey'" in printed
    assert printed.endswith("claude -p 'two words'")
    assert "export ANTHROPIC_BASE_URL=http://127.0.0.1:9337\n" in printed
