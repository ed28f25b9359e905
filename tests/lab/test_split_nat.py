"""A split across NATs in the lab: a NAT'd node that cannot hold the default model
splits it with a member behind another NAT, reached through a public member's
circuit relay (then, where DCUtR punches through, directly), and answers with it."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import wait_until
from labnodes import FAST, LabNode, lab, lab_nodes
from netlab import Lab

__all__ = ["lab", "lab_nodes"]  # fixtures, used by name

pytestmark = pytest.mark.lab

DEFAULT = "gemma-3-270m-Q4_K_M"


def test_split_between_two_nodes_behind_nats(
    lab: Lab,
    lab_nodes: Callable[..., LabNode],
    model_path: Path,
    tmp_path: Path,
) -> None:
    relay_host = lab.public("relay")
    a_host = lab.nat("r1").private("a")
    b_host = lab.nat("r2").private("b")
    # The relay has no memory to lend: the split must go to B, behind the other NAT.
    relay = lab_nodes(relay_host, ["--standby", "--max-vram", "1MB", *FAST]).wait_started()
    token = relay.invite()
    # B holds the model file (weights go by reference) and lends memory.
    home = tmp_path / "b"
    (home / "models").mkdir(parents=True)
    os.link(model_path, home / "models" / model_path.name)
    b = lab_nodes(b_host, ["--join", token, "--max-vram", "100MB", *FAST], home).wait_started()
    b_id = b.node_id()
    a = lab_nodes(
        a_host, ["--join", token, "--model", str(model_path), "--max-vram", "230MB", *FAST]
    ).wait_started()

    def split_ready() -> bool:
        status = a.status()
        served = status["models_served"]
        return bool(served and served[0]["state"] == "ready" and status["split"])

    wait_until(
        split_ready,
        240,
        "A to split the model with B across the NATs",
        describe=lambda: f"A: {a.status()['split']} {a.status()['connections']}",
    )
    status = a.status()
    assert [t["worker"] for t in status["tunnels"]] == [b_id]
    paths = {c["path"] for c in status["connections"] if c["peer"] == b_id}
    assert paths & {"relayed", "hole-punched"}, paths  # never a direct dial: both are NAT'd
    print(f"A splits with B over {sorted(paths)}: {status['split']}")

    a.say_hi(DEFAULT)
