"""What a new user meets first: the README's examples, restarts, the home, the CLI.

The README's code blocks are read from README.md and run as written (only the
port of ``localhost:9337`` changed to the test node's), so they cannot drift.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import NodeProcess
from meshp2p_cli.main import build_parser

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
MODEL = "gemma-3-270m-Q4_K_M"
README_URL = "http://localhost:9337"


def readme_block(language: str, containing: str) -> str:
    """The README's fenced ``language`` block that contains ``containing``."""
    blocks = re.findall(rf"```{language}\n(.*?)```", README, re.DOTALL)
    found = [b for b in blocks if containing in b]
    assert len(found) == 1, f"{len(found)} {language} blocks in README.md hold {containing!r}"
    return found[0]


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory, model_path: Path) -> Iterator[NodeProcess]:
    proc = NodeProcess(tmp_path_factory.mktemp("readme-node"), ["--model", str(model_path)])
    with proc.serving() as ready:
        yield ready


def test_readme_curl_chat_ends_in_seconds(node: NodeProcess) -> None:
    """The README's first chat names no max_tokens; the answer still ends, and soon."""
    block = readme_block("sh", "/v1/chat/completions")
    base = node.api_url.removesuffix("/v1")
    started = time.monotonic()
    done = subprocess.run(
        ["bash", "-e", "-c", block.replace(README_URL, base)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    took = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    answers = _json_values(done.stdout)
    chat = next(a for a in answers if a.get("object") == "chat.completion")
    assert chat["choices"][0]["finish_reason"] in ("stop", "length")  # sampled: it may run on
    assert chat["choices"][0]["message"]["content"]
    # Within the bound even when sampling runs away to the default cap.
    assert took < 60, f"the README's chat took {took:.1f} s"


def test_readme_python_chat_runs(node: NodeProcess) -> None:
    block = readme_block("python", "from openai import OpenAI")
    done = subprocess.run(
        [sys.executable, "-c", block.replace(README_URL, node.api_url.removesuffix("/v1"))],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip()


def test_readme_library_example_is_the_tested_file() -> None:
    example = (ROOT / "docs/examples/embed_node.py").read_text()
    code = example.split('"""', 2)[2].lstrip("\n")
    assert readme_block("python", "meshp2p.Node(") == code


def test_models_list_the_same_created_on_every_node(node: NodeProcess) -> None:
    import httpx

    data = httpx.get(node.api_url + "/models", timeout=10).json()["data"]
    assert [m["created"] for m in data] == [0]


def test_restart_serves_what_the_home_served(
    start_node: object, model_path: Path, tmp_path: Path
) -> None:
    start = start_node  # type: ignore[assignment]
    first: NodeProcess = start(["--model", str(model_path)], home=tmp_path).wait_ready()
    assert first.stop() == 0
    again: NodeProcess = start([], home=tmp_path).wait_ready()
    assert [m["id"] for m in again.status()["models_served"]] == [MODEL]
    assert again.status()["models_served"][0]["path"] == str(model_path)
    assert again.stop() == 0
    # --standby serves nothing, and is remembered too.
    standby: NodeProcess = start(["--standby"], home=tmp_path).wait_started()
    assert standby.status()["models_served"] == []
    assert standby.stop() == 0
    still: NodeProcess = start([], home=tmp_path).wait_started()
    assert still.status()["models_served"] == []
    assert any(line.startswith("no model: standby") for line in still.lines)


def test_a_home_in_use_is_refused_naming_its_holder(start_node: object, tmp_path: Path) -> None:
    start = start_node  # type: ignore[assignment]
    holder: NodeProcess = start(["--standby"], home=tmp_path).wait_started()
    ports = ["--port", "0", "--console-port", "0", "--listen", "/ip4/127.0.0.1/tcp/0"]
    second = subprocess.run(
        [sys.executable, "-m", "meshp2p_cli", "node", "--home", str(tmp_path), "--standby", *ports],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert second.returncode == 1
    assert second.stderr.strip().splitlines() == [
        f"meshp2p: error: home {tmp_path} is in use by another meshp2p node "
        f"(process {holder.proc.pid}); stop it, or give this node its own home with --home DIR"
    ]
    assert holder.proc.poll() is None


@pytest.mark.parametrize(
    "argv",
    [
        ["--home", "/h", "--log-level", "INFO", "node"],
        ["node", "--home", "/h", "--log-level", "INFO"],
        ["--log-level", "DEBUG", "node", "--home", "/h", "--log-level", "INFO"],
    ],
    ids=["before", "after", "both"],
)
def test_global_options_go_on_either_side_of_the_command(argv: list[str]) -> None:
    args = build_parser().parse_args(argv)
    assert (args.command, str(args.home), args.log_level) == ("node", "/h", "INFO")


def test_global_options_keep_their_defaults() -> None:
    args = build_parser().parse_args(["models"])
    assert args.home is None and args.log_level


def _json_values(text: str) -> list[dict]:  # type: ignore[type-arg]
    decoder = json.JSONDecoder()
    values, at = [], 0
    while at < len(text):
        if text[at].isspace():
            at += 1
            continue
        value, at = decoder.raw_decode(text, at)
        values.append(value)
    return values
