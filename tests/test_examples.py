"""Every example under docs/examples/ runs as documented, so docs/library.md cannot rot."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import NodeProcess

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "docs/examples"


def run_example(name: str, *args: str, home: Path, timeout: float = 240) -> tuple[str, str]:
    """The example's stdout and stderr; it must exit 0."""
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "MESHP2P_HOME": str(home)},
        cwd=home,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout, done.stderr


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory, model_path: Path) -> Iterator[NodeProcess]:
    proc = NodeProcess(tmp_path_factory.mktemp("example-node"), ["--model", str(model_path)])
    with proc.serving() as ready:
        yield ready


def test_every_example_is_in_the_library_docs() -> None:
    library = (ROOT / "docs/library.md").read_text()
    for example in sorted(EXAMPLES.glob("*.py")):
        assert f"docs/examples/{example.name}" in library, example.name


def test_embed_node_waits_for_the_model_and_chats(tmp_path: Path) -> None:
    out, err = run_example("embed_node.py", home=tmp_path)
    assert out.strip()  # the model's answer (sampled: its words vary)
    assert err == ""


def test_mesh_gossip_hosts_see_each_others_announcements(tmp_path: Path) -> None:
    out, err = run_example("mesh_gossip.py", home=tmp_path, timeout=60)
    seen = re.findall(
        r"^(\S+) sees (\S+): role standby, (\d+) GiB, announcement seq \d+$", out, re.M
    )
    assert len(seen) == 2, out
    (a, b, memory_b), (c, d, memory_d) = seen
    assert (a, b) == (d, c)  # each host names the other
    assert {memory_b, memory_d} == {"4", "8"}
    assert err == ""


def test_route_chat_streams_an_answer_from_a_node(node: NodeProcess, tmp_path: Path) -> None:
    token = node.wait_for_line("invite: ").split(" ", 1)[1]
    out, err = run_example("route_chat.py", token, home=tmp_path, timeout=120)
    node_id = node.wait_for_line("meshp2p ").split()[-1]
    assert err.strip() == f"status 200 from {node_id[-8:]}"
    assert out.strip()


def test_framed_echo_over_two_node_built_hosts(tmp_path: Path) -> None:
    out, err = run_example("framed_echo.py", home=tmp_path, timeout=60)
    assert out.strip() == "{'t': 'echo', 'text': 'over the mesh transport'}"
    assert err == ""


def test_placement_plan_borrows_from_the_nearest_standby_nodes(tmp_path: Path) -> None:
    out, _ = run_example("placement_plan.py", home=tmp_path, timeout=60)
    lines = out.splitlines()
    assert lines[0].startswith("split: ")
    assert [line.split()[0] for line in lines[2:]] == ["near", "next"]


def test_engine_generate_answers_and_stops(tmp_path: Path) -> None:
    out, _ = run_example("engine_generate.py", home=tmp_path, timeout=120)
    assert re.fullmatch(r"'.*' \(stop, \d+ tokens\)\n", out), out


def test_validate_request_accepts_and_refuses(tmp_path: Path) -> None:
    out, err = run_example("validate_request.py", home=tmp_path, timeout=60)
    ok, refused = out.splitlines()
    assert ok == "m 8 False"
    assert refused.startswith('400 {"error": {"message": "\'temperature\' must be between')
    assert err == ""


def test_nostr_listings_keep_the_newest_and_score_it(tmp_path: Path) -> None:
    out, err = run_example("nostr_listings.py", home=tmp_path, timeout=60)
    assert out == "poker-night: 3 nodes, listed 0 s ago, score 425.0\n"
    assert err == ""


def test_plan_standby_gives_the_wanted_model_to_exactly_one_node(tmp_path: Path) -> None:
    out, err = run_example("plan_standby.py", home=tmp_path, timeout=60)
    lines = out.splitlines()
    assert [line.split()[1] for line in lines] == ["stay", "serve", "stay"]
    assert lines[1].startswith("standby-2: serve qwen-7b")
    assert err == ""
