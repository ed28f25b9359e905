"""Benchmark: how fast, and with how many gossip messages, a joining node becomes known to all.

Run with ``make bench-convergence`` (or ``python tests/bench/bench_convergence.py``).
Real node processes on loopback: the first serves the default model, the
others join one at a time as standby nodes. For the Nth node it measures the
time from its process start until every one of the N nodes lists all the
others, and the gossip frames and bytes all nodes sent meanwhile. Results go to
``docs/benchmarks/convergence.json``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))

from _bench import machine, stop_all, write_result  # noqa: E402
from conftest import NodeProcess  # noqa: E402

from meshp2p.inference._models import ModelStore  # noqa: E402


def totals(nodes: list[NodeProcess]) -> tuple[int, int]:
    frames = sent = 0
    for node in nodes:
        gossip = node.status()["gossip"]
        frames += gossip["frames_sent"]
        sent += gossip["bytes_sent"]
    return frames, sent


def converged(nodes: list[NodeProcess], ids: list[str]) -> bool:
    for node, own in zip(nodes, ids, strict=True):
        listed = {p["id"] for p in node.status()["peers"]}
        if listed != set(ids) - {own}:
            return False
    return True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=8, help="largest mesh (default 8)")
    parser.add_argument("--heartbeat", type=float, default=5.0)
    parser.add_argument(
        "--out", type=Path, default=ROOT / "docs" / "benchmarks" / "convergence.json"
    )
    args = parser.parse_args()
    common = ["--heartbeat-interval", str(args.heartbeat)]
    rows = []
    nodes: list[NodeProcess] = []
    ids: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        model = ModelStore(base / "n1").ensure_default()
        try:
            first = NodeProcess(base / "n1", ["--model", str(model.path), *common])
            nodes.append(first.wait_started())
            ids.append(first.wait_for_line("meshp2p ").split()[-1])
            token = first.wait_for_line("invite: ").split(" ", 1)[1]
            print(f"{'N':>3} {'converge s':>11} {'frames':>8} {'bytes':>9}")
            for n in range(2, args.nodes + 1):
                frames0, bytes0 = totals(nodes)
                started = time.monotonic()
                node = NodeProcess(base / f"n{n}", ["--join", token, *common])
                node.wait_started()
                nodes.append(node)
                ids.append(node.wait_for_line("meshp2p ").split()[-1])
                while not converged(nodes, ids):
                    if time.monotonic() - started > 60:
                        raise SystemExit(f"node {n} did not converge within 60 s")
                    time.sleep(0.02)
                elapsed = time.monotonic() - started
                frames1, bytes1 = totals(nodes)
                row = {
                    "n": n,
                    "converge_s": round(elapsed, 3),
                    "frames": frames1 - frames0,
                    "bytes": bytes1 - bytes0,
                }
                rows.append(row)
                print(f"{n:>3} {elapsed:>11.2f} {row['frames']:>8} {row['bytes']:>9}")
            # A change flooded through the whole mesh: a clean leave, seen by all others.
            gone = nodes.pop(len(nodes) // 2)
            gone_id = ids.pop(len(ids) // 2)
            started = time.monotonic()
            gone.stop()
            while any(gone_id in {p["id"] for p in node.status()["peers"]} for node in nodes):
                if time.monotonic() - started > 60:
                    raise SystemExit("a leave was not seen by all within 60 s")
                time.sleep(0.02)
            leave_s = time.monotonic() - started
            links = [len(node.status()["connections"]) for node in nodes]
            print(
                f"leave seen by all {len(nodes)} others in {leave_s:.2f} s; "
                f"connections per node {min(links)}-{max(links)}"
            )
        finally:
            stop_all(nodes)
    result = {
        "benchmark": "convergence",
        "note": "time from the Nth node's process start (Python start-up included) until "
        "all N nodes list each other; gossip frames and bytes sent by all nodes meanwhile",
        "heartbeat_interval_s": args.heartbeat,
        "machine": machine(),
        "rows": rows,
        "leave_seen_by_all_s": round(leave_s, 3),
        "connections_per_node": [min(links), max(links)],
    }
    write_result(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
