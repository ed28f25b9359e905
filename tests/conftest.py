"""Shared fixtures: the default model built once, and real node processes on loopback."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from meshp2p.inference._models import ModelStore
from meshp2p.inference._speculative import exact_kernels

# Tests load models in this process too, as workers do: ggml reads the switch at the
# process's first batched product, so it is set before any test runs.
exact_kernels()

STARTUP_TIMEOUT = 90.0


@pytest.fixture(scope="session")
def model_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A node home whose model store holds the default model, assembled once per run."""
    home = tmp_path_factory.mktemp("model-home")
    ModelStore(home).ensure_default()
    return home


@pytest.fixture(scope="session")
def model_path(model_home: Path) -> Path:
    return ModelStore(model_home).ensure_default().path


# A Hermes-style chat template with tools, for a copy of the default model.
TEMPLATE = """{%- if tools %}<|im_start|>system
You may call these tools:
{% for tool in tools %}{{ tool | tojson }}
{% endfor %}Call one as <tool_call>{"name": ..., "arguments": {...}}</tool_call>.<|im_end|>
{% endif %}{% for m in messages %}<|im_start|>{{ m['role'] }}
{{ m['content'] or '' }}<|im_end|>
{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant
{% endif %}"""


@pytest.fixture(scope="session")
def tool_model(model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default model with a tool-capable template: a second, different model id."""
    out = tmp_path_factory.mktemp("tool-model") / "gemma-tools-q4_k_m.gguf"
    return with_chat_template(model_path, out, TEMPLATE)


def with_chat_template(model: Path, out: Path, template: str) -> Path:
    """A copy of ``model`` at ``out`` whose GGUF carries ``template`` (gguf's own tool)."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "gguf.scripts.gguf_new_metadata",
            str(model),
            str(out),
            "--chat-template",
            template,
            "--force",
        ],
        check=True,
        capture_output=True,
    )
    return out


class NodeProcess:
    """A ``meshp2p node`` running as a real child process, on free loopback ports."""

    def __init__(
        self,
        home: Path,
        args: list[str],
        env: dict[str, str] | None = None,
        wrap: list[str] | None = None,
    ) -> None:
        """``wrap`` prefixes the command (``ip netns exec NS`` runs it in a namespace)."""
        self.home = home
        # Tests stay on loopback: the mesh listens on 127.0.0.1 unless a test says otherwise.
        listen = (
            []
            if "--listen" in args
            else [
                "--listen",
                "/ip4/127.0.0.1/udp/0/quic-v1",
                "--listen",
                "/ip4/127.0.0.1/tcp/0",
            ]
        )
        command = [
            *(wrap or []),
            sys.executable,
            "-m",
            "meshp2p_cli",
            "--home",
            str(home),
            "node",
            "--port",
            "0",
            "--console-port",
            "0",
            "--threads",
            "1",
            *listen,
            *args,
        ]
        self.proc = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        )
        self.lines: list[str] = []
        self.stderr_lines: list[str] = []
        self._changed = threading.Condition()
        threading.Thread(
            target=self._pump, args=(self.proc.stdout, self.lines), daemon=True
        ).start()
        threading.Thread(
            target=self._pump, args=(self.proc.stderr, self.stderr_lines), daemon=True
        ).start()
        self.api_url = ""
        self.console_url = ""

    def _pump(self, stream: object, into: list[str]) -> None:
        for line in stream:  # type: ignore[attr-defined]
            with self._changed:
                into.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def wait_for_line(self, prefix: str, timeout: float = STARTUP_TIMEOUT) -> str:
        """The first stdout line starting with ``prefix``; fails on timeout or exit."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for line in self.lines:
                    if line.startswith(prefix):
                        return line
                if self.proc.poll() is not None and not any(
                    ln.startswith(prefix) for ln in self.lines
                ):
                    raise AssertionError(
                        f"node exited ({self.proc.returncode}) before {prefix!r}:\n"
                        + "\n".join(self.lines + self.stderr_lines)
                    )
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"no {prefix!r} line within {timeout} s:\n"
                        + "\n".join(self.lines + self.stderr_lines)
                    )
                self._changed.wait(min(left, 0.5))

    def wait_started(self) -> NodeProcess:
        self.api_url = self.wait_for_line("api: ").split(" ", 1)[1]
        self.console_url = self.wait_for_line("console: ").split(" ", 1)[1]
        return self

    def wait_ready(self) -> NodeProcess:
        self.wait_started()
        self.wait_for_line("model ", timeout=STARTUP_TIMEOUT)
        wait_until(
            lambda: all(m["state"] == "ready" for m in self.status()["models_served"]),
            STARTUP_TIMEOUT,
            "models ready",
        )
        return self

    def status(self) -> dict:  # type: ignore[type-arg]
        return httpx.get(self.console_url + "/api/status", timeout=10).json()  # type: ignore[no-any-return]

    def stop(self, sig: int = signal.SIGINT, timeout: float = 20.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def close(self, timeout: float = 20.0) -> None:
        """Stop the node cleanly; kill it if it does not stop within ``timeout``."""
        try:
            self.stop(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    @contextmanager
    def serving(self) -> Iterator[NodeProcess]:
        """The node once its models are ready; closed when the block ends."""
        try:
            yield self.wait_ready()
        finally:
            self.close()


def wait_until(
    predicate: object,
    timeout: float,
    what: str,
    interval: float = 0.05,
    describe: object = None,
) -> None:
    """Poll ``predicate`` until true; used only for state that has no event to wait on.

    ``describe`` (a callable) says what the state was when it timed out.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():  # type: ignore[operator]
                return
        except (httpx.HTTPError, KeyError):
            pass
        time.sleep(interval)
    detail = ""
    if describe is not None:
        try:
            detail = f"\n{describe()}"  # type: ignore[operator]
        except Exception as exc:
            detail = f"\n(describing the state failed: {exc!r})"
    raise AssertionError(f"timed out after {timeout} s waiting for {what}{detail}")


@pytest.fixture
def start_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """Start nodes with ``start_node(args, home=None)``; all are stopped at teardown."""
    nodes: list[NodeProcess] = []

    def start(
        args: list[str], home: Path | None = None, env: dict[str, str] | None = None
    ) -> NodeProcess:
        node = NodeProcess(home or tmp_path_factory.mktemp("node"), args, env)
        nodes.append(node)
        return node

    yield start
    for node in nodes:
        node.close(timeout=15)


ROOT = Path(__file__).resolve().parents[1]
RELAY_VENV = ROOT / ".venv-relay"


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class NostrRelay:
    """A real Nostr relay (PyPI ``nostr-relay``) on a free loopback port, with its
    own sqlite database. ``make relay-install`` puts it in ``.venv-relay``."""

    def __init__(self, workdir: Path) -> None:
        binary = RELAY_VENV / "bin" / "nostr-relay"
        if not binary.exists():
            raise RuntimeError(f"no Nostr relay at {binary}: run make relay-install")
        packaged = next(RELAY_VENV.glob("lib/python*/site-packages/nostr_relay/config.yaml"))
        self.port = free_port()
        self.url = f"ws://127.0.0.1:{self.port}"
        self.db = workdir / "relay.sqlite3"
        config = (
            packaged.read_text()
            .replace("sqlite+aiosqlite:///nostr.sqlite3", f"sqlite+aiosqlite:///{self.db}")
            .replace("127.0.0.1:6969", f"127.0.0.1:{self.port}")
            .replace("port: 6969", f"port: {self.port}")
        )
        path = workdir / "relay.yaml"
        path.write_text(config)
        self.log = (workdir / "relay.log").open("wb")
        self.proc = subprocess.Popen(
            [str(binary), "-c", str(path), "serve"],
            cwd=workdir,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # gunicorn forks workers: stop the whole group
        )
        wait_until(self._accepts, 30, f"the Nostr relay on port {self.port} to listen")

    def _accepts(self) -> bool:
        import socket

        if self.proc.poll() is not None:
            raise AssertionError(f"the relay exited: {self.proc.returncode}")
        with socket.socket() as sock:
            return sock.connect_ex(("127.0.0.1", self.port)) == 0

    def stored(self) -> list[str]:
        """Every row the relay stored, as text: what an outsider can read."""
        import sqlite3

        with sqlite3.connect(self.db) as db:
            tables = [r[0] for r in db.execute("select name from sqlite_master where type='table'")]
            return [repr(row) for t in tables for row in db.execute(f"select * from {t}")]

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        self.log.close()


@pytest.fixture
def nostr_relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """Start real relays with ``nostr_relay()``; all are killed at teardown."""
    relays: list[NostrRelay] = []

    def start() -> NostrRelay:
        relay = NostrRelay(tmp_path_factory.mktemp("relay"))
        relays.append(relay)
        return relay

    yield start
    for relay in relays:
        relay.kill()


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purposes.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1].startswith(("Z", "X")) is False
    except OSError:
        return False


__all__ = ["NodeProcess", "NostrRelay", "free_port", "pid_alive", "signal", "wait_until"]
