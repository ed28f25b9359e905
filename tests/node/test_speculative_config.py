"""The speculative-decoding switches: CLI flags into NodeConfig, and their checks."""

from __future__ import annotations

from pathlib import Path

import pytest
from meshp2p_cli.main import build_parser

from meshp2p import NodeConfig
from meshp2p._errors import ConfigError


def test_speculation_is_on_by_default_without_a_draft() -> None:
    args = build_parser().parse_args(["node"])
    assert args.speculative is True and args.draft is None
    config = NodeConfig(home=Path("/h"))
    assert config.speculative is True and config.draft is None


def test_flags_turn_speculation_off_or_name_a_draft() -> None:
    assert build_parser().parse_args(["node", "--no-speculative"]).speculative is False
    assert build_parser().parse_args(["node", "--draft", "small.gguf"]).draft == "small.gguf"


def test_a_draft_without_speculation_is_refused() -> None:
    with pytest.raises(ConfigError, match="--draft speeds up speculative decoding"):
        NodeConfig(home=Path("/h"), speculative=False, draft="small.gguf")
