"""What the benchmark scripts share: node clean-up, the machine line, results on disk."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}"


def stop_all(nodes: Iterable[Any]) -> None:
    """Stop every NodeProcess cleanly, killing any that does not stop in time."""
    for node in nodes:
        try:
            node.stop()
        except subprocess.TimeoutExpired:
            node.kill()


def write_result(out: Path, result: dict[str, Any]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    shown = out.relative_to(ROOT) if out.is_relative_to(ROOT) else out
    print(f"wrote {shown}")


def print_comparison(
    result: dict[str, Any],
    paths: tuple[str, str],
    *,
    ratio_target: float,
    latency_key: str,
    latency_target: float,
) -> None:
    """The table and verdict line of a baseline-against-measured latency/speed benchmark."""
    print(
        f"{'path':10} {'ttft ms':>9} {'tok/s':>8}   (medians: ttft of {result['ttft_rounds']} "
        f"short prompts, tok/s of {result['rounds']} x {result['max_tokens']} tokens; 1 thread)"
    )
    for name in paths:
        row = result[name]
        print(f"{name:10} {row['ttft_ms']:9.1f} {row['tok_s']:8.1f}")
    print(
        f"tok_s_ratio={result['tok_s_ratio']:.3f} (target >= {ratio_target})  "
        f"{latency_key}={result[latency_key]:.1f} (target <= {latency_target:g})  "
        f"{'PASS' if result['pass'] else 'MISS'}"
    )
