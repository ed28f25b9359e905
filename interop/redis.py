"""A throwaway redis-server for the transport-interop checks.

``python interop/redis.py --install`` makes a ``redis-server`` binary available: the one on
PATH if there is one, otherwise Debian's packages fetched with ``apt-get download`` and
unpacked with ``dpkg -x`` under ``interop/.deps/root`` (no root needed once unpacked).

``with redis_server() as addr:`` starts one on a free 127.0.0.1 port, without persistence,
waits until it answers PING, yields ``"127.0.0.1:PORT"`` and kills it at the end.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEPS = HERE / ".deps"
ROOT = DEPS / "root"
LOCAL_BIN = ROOT / "usr" / "bin" / "redis-server"
LOCAL_LIB = ROOT / "usr" / "lib" / "x86_64-linux-gnu"
PACKAGES = ("redis-server", "redis-tools", "liblzf1", "libjemalloc2")


class RedisError(RuntimeError):
    """redis-server could not be installed, found or started; the message says why."""


def _local_env() -> dict[str, str]:
    env = dict(os.environ)
    old = env.get("LD_LIBRARY_PATH")
    env["LD_LIBRARY_PATH"] = f"{LOCAL_LIB}:{old}" if old else str(LOCAL_LIB)
    return env


def find_server() -> tuple[str, dict[str, str]] | None:
    """The redis-server to run and the environment to run it in, or None when absent."""
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path, dict(os.environ)
    if LOCAL_BIN.exists():
        return str(LOCAL_BIN), _local_env()
    return None


def _version(binary: str, env: dict[str, str]) -> str:
    try:
        out = subprocess.run(
            [binary, "--version"], env=env, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RedisError(f"{binary} --version failed: {exc}") from None
    if out.returncode != 0:
        tail = (out.stderr or out.stdout).strip().splitlines()[-1:] or ["no output"]
        raise RedisError(f"{binary} --version exited {out.returncode}: {tail[0]}")
    return out.stdout.strip()


def _apt_download(dest: Path) -> None:
    if not shutil.which("apt-get") or not shutil.which("dpkg"):
        raise RedisError("no redis-server on PATH and no apt-get/dpkg to fetch one")

    def download() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["apt-get", "download", *PACKAGES],
            cwd=dest,
            capture_output=True,
            text=True,
            timeout=300,
        )

    out = download()
    if out.returncode != 0 and os.geteuid() == 0:
        upd = subprocess.run(["apt-get", "update"], capture_output=True, text=True, timeout=300)
        if upd.returncode != 0:
            last = (upd.stderr.strip().splitlines() or ["no output"])[-1]
            raise RedisError(f"apt-get update failed: {last}")
        out = download()
    if out.returncode != 0:
        last = (out.stderr.strip().splitlines() or ["no output"])[-1]
        hint = "" if os.geteuid() == 0 else " (not root, so apt-get update was not tried)"
        raise RedisError(f"apt-get download {' '.join(PACKAGES)} failed: {last}{hint}")


def install() -> str:
    """Make redis-server available; return its ``--version`` line."""
    found = find_server()
    if found:
        return _version(*found)
    DEPS.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=DEPS) as tmp:
        _apt_download(Path(tmp))
        debs = sorted(Path(tmp).glob("*.deb"))
        if not debs:
            raise RedisError("apt-get download produced no .deb files")
        ROOT.mkdir(parents=True, exist_ok=True)
        for deb in debs:
            out = subprocess.run(
                ["dpkg", "-x", str(deb), str(ROOT)], capture_output=True, text=True, timeout=120
            )
            if out.returncode != 0:
                last = (out.stderr.strip().splitlines() or ["no output"])[-1]
                raise RedisError(f"dpkg -x {deb.name} failed: {last}")
    if not LOCAL_BIN.exists():
        raise RedisError(f"unpacked the packages but {LOCAL_BIN} is missing")
    return _version(str(LOCAL_BIN), _local_env())


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _answers_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"*1\r\n$4\r\nPING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


@contextmanager
def redis_server(timeout: float = 10.0) -> Iterator[str]:
    """Run a redis-server on a free 127.0.0.1 port for the ``with`` block; yield its address."""
    found = find_server()
    if found is None:
        raise RedisError("redis-server is not installed; run python interop/redis.py --install")
    binary, env = found
    last_err = ""
    for _ in range(3):  # a free port can be taken between probing and binding
        port = _free_port()
        with tempfile.TemporaryDirectory(prefix="meshp2p-redis-") as workdir:
            args = ["--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
            args += ["--dir", workdir, "--daemonize", "no", "--loglevel", "warning"]
            proc = subprocess.Popen(
                [binary, *args],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            try:
                deadline = time.monotonic() + timeout
                ready = False
                while time.monotonic() < deadline and proc.poll() is None:
                    if _answers_ping(port):
                        ready = True
                        break
                    time.sleep(0.05)
                if not ready:
                    if proc.poll() is None:
                        proc.kill()
                    out = proc.communicate(timeout=5)[0] or ""
                    last_err = (out.strip().splitlines() or ["no output"])[-1]
                    continue
                yield f"127.0.0.1:{port}"
                return
            finally:
                if proc.poll() is None:
                    proc.kill()
                    try:
                        proc.wait(timeout=5)
                    except subprocess.TimeoutExpired:
                        pass
                if proc.stdout is not None:
                    proc.stdout.close()
    raise RedisError(f"redis-server did not answer PING on 127.0.0.1: {last_err}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="redis-server for the transport-interop checks")
    parser.add_argument("--install", action="store_true", help="make redis-server available")
    parser.add_argument("--check", action="store_true", help="start one, PING it, stop it")
    args = parser.parse_args(argv)
    if not (args.install or args.check):
        parser.print_help()
        return 2
    try:
        if args.install:
            print(f"redis: {install()}")
        if args.check:
            with redis_server() as addr:
                print(f"redis: answered PING at {addr}")
    except RedisError as exc:
        print(f"redis: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
