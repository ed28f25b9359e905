"""Benchmark: how fast, and with how many gossip messages, a joining node becomes known to all.

Run with ``make bench-convergence`` (or ``python tests/bench/bench_convergence.py``).
Real node processes on loopback: the first serves the default model, the
others join one at a time as standby nodes. For the Nth node it measures the
time from its process start until every one of the N nodes lists all the
others, and the gossip frames and bytes all nodes sent meanwhile. Results go to
``docs/benchmarks/convergence.json``.

Then, with all N up: a steady minute (gossip bytes per node by message type, the
load average, each process's CPU), and ``--leaves`` clean leaves, one node at a
time. A leave is timed from the nodes' own log lines (INFO, wall clock, shared by
all processes on one machine): from the leaver's "leaving the mesh" to each other
node's "left the mesh" (or "reported dead"), so polling the nodes' status does not
count. ``bench_sim.py --nodes N --link-ms 0.05 0.05`` runs the same scenario in
the simulator.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

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


_LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")


def logged_at(node: NodeProcess, pattern: str) -> float | None:
    """Wall time of the node's first log line containing ``pattern``."""
    for line in list(node.stderr_lines):
        if pattern in line and (m := _LOG_TIME.match(line)):
            return datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
    return None


def cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds a process has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def load_average() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def by_kind(nodes: list[NodeProcess]) -> dict[str, int]:
    out: dict[str, int] = {}
    for node in nodes:
        for kind, counted in node.status()["gossip"].get("sent_by_kind", {}).items():
            out[kind] = out.get(kind, 0) + counted["bytes"]
    return out


def steady(nodes: list[NodeProcess], seconds: float) -> dict[str, Any]:
    """Gossip bytes per node per minute by message type (frames, before yamux/Noise),
    CPU per process and the load average, over ``seconds`` of a mesh left alone."""
    pids = [node.proc.pid for node in nodes]
    kinds0, cpu0, t0 = by_kind(nodes), [cpu_seconds(p) for p in pids], time.monotonic()
    loads = []
    while time.monotonic() - t0 < seconds:
        time.sleep(5)
        loads.append(load_average())
    kinds1, cpu1, t1 = by_kind(nodes), [cpu_seconds(p) for p in pids], time.monotonic()
    sweeps = []
    for _ in range(3):
        t = time.monotonic()
        by_kind(nodes)
        sweeps.append(time.monotonic() - t)
    minutes, n = (t1 - t0) / 60, len(nodes)
    per_kind = {
        k: round((kinds1[k] - kinds0.get(k, 0)) / n / minutes / 1000, 2) for k in sorted(kinds1)
    }
    shares = [(b - a) / (t1 - t0) for a, b in zip(cpu0, cpu1, strict=True)]
    return {
        "seconds": round(t1 - t0, 1),
        "gossip_kb_node_min_by_kind": per_kind,
        "gossip_kb_node_min": round(sum(per_kind.values()), 2),
        "cpu_per_node_process": {
            "mean": round(statistics.mean(shares), 3),
            "max": round(max(shares), 3),
            "all_nodes": round(sum(shares), 2),
        },
        "load_average_1min": {"min": min(loads), "max": max(loads)},
        "cpus": os.cpu_count(),
        "status_of_all_nodes_s": round(statistics.median(sweeps), 3),
    }


def time_leave(nodes: list[NodeProcess], ids: list[str], index: int) -> dict[str, Any]:
    """Stop ``nodes[index]`` cleanly; when each other node learned it left, from logs."""
    gone, gone_id = nodes.pop(index), ids.pop(index)
    links = len(gone.status()["connections"])
    load0, cpu0 = load_average(), sum(cpu_seconds(n.proc.pid) for n in nodes)
    started = time.monotonic()
    gone.proc.send_signal(signal.SIGINT)
    # As a poller sees it: every node's /api/status, one after another, until none
    # lists the leaver (how this benchmark timed a leave before).
    exited: float | None = None
    while any(gone_id in {p["id"] for p in node.status()["peers"]} for node in nodes):
        if exited is None and gone.proc.poll() is not None:
            exited = time.monotonic() - started
        if time.monotonic() - started > 60:
            raise SystemExit("a leave was not seen by all within 60 s")
        time.sleep(0.02)
    via_status = time.monotonic() - started
    gone.proc.wait(timeout=30)
    if exited is None:  # it was still shutting down when the last node had dropped it
        exited = time.monotonic() - started
    delays: list[float] = []
    for node in nodes:
        while True:
            at = logged_at(node, f"{gone_id} left the mesh") or logged_at(
                node, f"{gone_id} reported dead"
            )
            if at is not None:
                break
            if time.monotonic() - started > 60:
                raise SystemExit("a leave was not seen by all within 60 s")
            time.sleep(0.1)
        delays.append(at)
    elapsed = time.monotonic() - started
    sent = logged_at(gone, "leaving the mesh")
    if sent is None:
        raise SystemExit(f"the leaver logged no 'leaving the mesh':\n{gone.stderr_lines[-20:]}")
    delays = sorted(d - sent for d in delays)
    return {
        "leaver_links": links,
        "seen_by_all_via_status_s": round(via_status, 3),
        # When the poll first saw the leaver gone: an upper bound, to one sweep.
        "leaver_exited_s": round(exited, 3),
        "seen_by_all_s": round(delays[-1], 3),
        "seen_by_99pct_s": round(delays[min(len(delays) - 1, int(0.99 * len(delays)))], 3),
        "median_s": round(statistics.median(delays), 3),
        "delays_s": [round(d, 3) for d in delays],
        "cpu_share_of_others_while_timing": round(
            (sum(cpu_seconds(n.proc.pid) for n in nodes) - cpu0) / elapsed, 2
        ),
        "load_average_1min": load0,
    }


def differences(nodes: list[NodeProcess], ids: list[str]) -> str:
    """Which node lacks (or lists in excess) which others, by index, with its last
    log lines: what a join that does not converge left behind."""
    out = []
    for i, (node, own) in enumerate(zip(nodes, ids, strict=True)):
        listed = {p["id"] for p in node.status()["peers"]}
        missing = sorted(ids.index(x) for x in set(ids) - {own} - listed)
        extra = len(listed - set(ids))
        if missing or extra:
            out.append(f"node {i}: lacks {missing}, {extra} unknown to us")
            out.extend(f"    {line}" for line in node.stderr_lines[-15:])
    return "\n".join(out)


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
    parser.add_argument("--leaves", type=int, default=3, help="clean leaves to time")
    parser.add_argument(
        "--steady-s", type=float, default=60.0, help="seconds of steady state to measure"
    )
    parser.add_argument(
        "--out", type=Path, default=ROOT / "docs" / "benchmarks" / "convergence.json"
    )
    args = parser.parse_args()
    common = ["--heartbeat-interval", str(args.heartbeat)]
    # INFO: the log lines that time a leave ("leaving the mesh", "left the mesh").
    env = {"MESHP2P_LOG_LEVEL": "INFO"}
    rows = []
    nodes: list[NodeProcess] = []
    ids: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        model = ModelStore(base / "n1").ensure_default()
        try:
            first = NodeProcess(base / "n1", ["--model", str(model.path), *common], env)
            nodes.append(first.wait_started())
            ids.append(first.wait_for_line("meshp2p ").split()[-1])
            token = first.wait_for_line("invite: ").split(" ", 1)[1]
            print(f"{'N':>3} {'converge s':>11} {'frames':>8} {'bytes':>9}")
            for n in range(2, args.nodes + 1):
                frames0, bytes0 = totals(nodes)
                started = time.monotonic()
                node = NodeProcess(base / f"n{n}", ["--join", token, *common], env)
                node.wait_started()
                nodes.append(node)
                ids.append(node.wait_for_line("meshp2p ").split()[-1])
                while not converged(nodes, ids):
                    if time.monotonic() - started > 60:
                        raise SystemExit(
                            f"node {n} did not converge within 60 s:\n{differences(nodes, ids)}"
                        )
                    # Each check asks every node: more often would starve a small machine.
                    time.sleep(0.02 if n <= 8 else 0.25)
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
            # The mesh left alone, then changes flooded through it: clean leaves.
            time.sleep(2 * args.heartbeat)
            quiet = steady(nodes, args.steady_s)
            print(
                f"steady: gossip {quiet['gossip_kb_node_min']} KB/node/min "
                f"{quiet['gossip_kb_node_min_by_kind']}; CPU per node process "
                f"{quiet['cpu_per_node_process']}; load {quiet['load_average_1min']}; "
                f"status of all nodes in {quiet['status_of_all_nodes_s']} s"
            )
            leaves = []
            for _ in range(args.leaves):
                leaves.append(time_leave(nodes, ids, len(nodes) // 2))
                row = leaves[-1]
                print(
                    f"leave seen by all {len(nodes)} others in {row['seen_by_all_s']:.3f} s "
                    f"(median {row['median_s']:.3f} s; load {row['load_average_1min']}; "
                    f"{row['leaver_links']} links); by polling their status "
                    f"{row['seen_by_all_via_status_s']:.2f} s; the leaver exited after "
                    f"{row['leaver_exited_s']:.2f} s"
                )
                time.sleep(args.heartbeat)
            links = [len(node.status()["connections"]) for node in nodes]
            print(f"connections per node {min(links)}-{max(links)}")
        finally:
            stop_all(nodes)
    result = {
        "benchmark": "convergence",
        "note": "time from the Nth node's process start (Python start-up included) until "
        "all N nodes list each other; gossip frames and bytes sent by all nodes meanwhile",
        "heartbeat_interval_s": args.heartbeat,
        "machine": machine(),
        "rows": rows,
        "steady": quiet,
        "leaves": leaves,
        "leave_seen_by_all_s": max(row["seen_by_all_s"] for row in leaves),
        "connections_per_node": [min(links), max(links)],
    }
    write_result(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
