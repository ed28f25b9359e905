"""Supervision of one inference worker child process: start, watch, restart with backoff."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, aclosing, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import trio

from .._errors import MeshError

log = logging.getLogger("meshp2p.worker")

WorkerState = Literal["loading", "ready", "restarting", "waiting", "stopped"]
"""``waiting``: the model cannot be placed now (the mesh lacks memory); retried each second."""

_REPLAN_EVERY = 1.0

# Restart delays after a crash: 1, 2, 4 ... capped. A worker that stayed up
# this long is considered healthy again and the delay starts over.
_BACKOFF_START = 1.0
_BACKOFF_MAX = 30.0
_HEALTHY_AFTER = 60.0
_READY_TIMEOUT = 300.0
_MAX_EVENT_LINE = 64 * 1024


class Unplaceable(MeshError):
    """The model cannot run now; the message says why (how much memory is missing)."""


@dataclass(frozen=True)
class Launch:
    """How the next child loads its model: solo, or split over RPC servers."""

    rpc: tuple[str, ...] = ()
    n_gpu_layers: int = 0
    tensor_split: tuple[float, ...] = ()
    info: dict[str, Any] = field(default_factory=dict)

    def arguments(self) -> list[str]:
        if not self.rpc:
            return []
        args = [f"--rpc={endpoint}" for endpoint in self.rpc]
        args += ["--n-gpu-layers", str(self.n_gpu_layers)]
        args += ["--tensor-split", ",".join(repr(x) for x in self.tensor_split)]
        return args


Placement = Callable[[], AbstractAsyncContextManager[Launch]]
"""Decides each start's Launch; the context lasts as long as that child runs (a split's
tunnels live in it). Raises Unplaceable when the model cannot run now."""


@asynccontextmanager
async def solo() -> AsyncIterator[Launch]:
    yield Launch()


@dataclass(frozen=True)
class WorkerSettings:
    model_id: str
    model_path: Path
    threads: int
    ctx_size: int
    log_dir: Path
    #: Threads for prompt evaluation; None: as many as ``threads``.
    threads_batch: int | None = None
    #: Threads for batches while the machine's other processes leave cores idle
    #: (``_threads``); None: ``threads_batch`` always.
    threads_batch_idle: int | None = None
    max_queue: int = 64
    queue_timeout: float = 300.0
    #: Tokens generated for a request that names no max_tokens (0: up to the context).
    default_max_tokens: int = 0
    #: Verify guessed tokens in batches (``_speculative``); with a draft model's guesses
    #: when ``draft_path`` is given.
    speculative: bool = True
    draft_path: Path | None = None


class InferenceWorker:
    """Keeps one llama.cpp child serving ``settings.model_id`` for as long as it runs."""

    def __init__(self, settings: WorkerSettings, placement: Placement = solo) -> None:
        self.settings = settings
        self.placement = placement
        self.launch: Launch | None = None
        self.state: WorkerState = "loading"
        self.port: int | None = None
        self.pid: int | None = None
        self.restarts = 0
        #: Answers the child is generating now, for this node's API or another node's.
        self.in_flight = 0
        #: Answers taken over from another host that broke off (mid-stream failover).
        self.resumed = 0
        self.last_error: str | None = None
        self.info: dict[str, Any] = {}
        self.retry_at: float | None = None
        #: The child's tokens guessed and accepted (its "speculation" events).
        self.speculation: dict[str, int] = {}
        self._speculation_changed = trio.Event()
        self._state_changed = trio.Event()

    @property
    def model_id(self) -> str:
        return self.settings.model_id

    @property
    def base_url(self) -> str | None:
        return f"http://127.0.0.1:{self.port}" if self.state == "ready" else None

    def status(self) -> dict[str, Any]:
        return {
            "id": self.model_id,
            "state": self.state,
            "path": str(self.settings.model_path),
            "pid": self.pid,
            "port": self.port,
            "restarts": self.restarts,
            "in_flight": self.in_flight,
            "resumed": self.resumed,
            "last_error": self.last_error,
            "n_ctx": self.info.get("n_ctx"),
            "threads": self.settings.threads,
            "threads_batch": self.settings.threads_batch or self.settings.threads,
            "threads_batch_idle": self.settings.threads_batch_idle
            or self.settings.threads_batch
            or self.settings.threads,
            "load_s": self.info.get("load_s"),
            "launch": self.launch.info if self.launch else None,
            "tools_supported": self.info.get("tools_supported", False),
            "speculative": self.settings.speculative,
            "speculation": dict(self.speculation),
        }

    def unavailable_reason(self) -> str:
        if self.state == "waiting":
            return f"model {self.model_id!r} is unavailable: {self.last_error}"
        if self.state == "loading":
            return f"model {self.model_id!r} is loading; retry shortly"
        if self.state == "restarting":
            wait = ""
            if self.retry_at is not None:
                wait = f" in {max(0.0, self.retry_at - time.monotonic()):.0f} s"
            return (
                f"model {self.model_id!r} is restarting after its worker stopped "
                f"({self.last_error}); next start{wait}"
            )
        return f"model {self.model_id!r} is stopped"

    async def wait_state_change(self) -> WorkerState:
        await self._state_changed.wait()
        return self.state

    async def wait_speculation_change(self) -> dict[str, int]:
        """The speculation counts, once the child reported them again."""
        await self._speculation_changed.wait()
        return self.speculation

    def _set_state(self, state: WorkerState) -> None:
        self.state = state
        self._state_changed.set()
        self._state_changed = trio.Event()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run and restart the child until cancelled. Reports started at once."""
        task_status.started()
        delay = _BACKOFF_START
        try:
            while True:
                started = trio.current_time()
                try:
                    async with self.placement() as launch:
                        self.launch = launch
                        if self.state != "loading":
                            self._set_state("loading")
                        await self._run_once(launch)
                except Unplaceable as exc:
                    if self.state != "waiting" or self.last_error != str(exc):
                        log.warning("cannot start %s: %s", self.model_id, exc)
                    self.last_error = str(exc)
                    self.launch = None
                    if self.state != "waiting":
                        self._set_state("waiting")
                    await trio.sleep(_REPLAN_EVERY)
                    continue
                self.launch = None
                if trio.current_time() - started > _HEALTHY_AFTER:
                    delay = _BACKOFF_START
                self.restarts += 1
                self.retry_at = time.monotonic() + delay
                self._set_state("restarting")
                log.warning(
                    "worker for %s stopped (%s); restarting in %.0f s",
                    self.model_id,
                    self.last_error,
                    delay,
                )
                await trio.sleep(delay)
                delay = min(delay * 2, _BACKOFF_MAX)
                self.retry_at = None
                self._set_state("loading")
        finally:
            self.port = None
            self.pid = None
            self.state = "stopped"

    def _command(self, launch: Launch) -> list[str]:
        s = self.settings
        return [
            sys.executable,
            "-m",
            "meshp2p.inference._worker_child",
            "--model-path",
            str(s.model_path),
            "--model-id",
            s.model_id,
            "--threads",
            str(s.threads),
            "--threads-batch",
            str(s.threads_batch or s.threads),
            *(["--threads-batch-idle", str(s.threads_batch_idle)] if s.threads_batch_idle else []),
            "--ctx-size",
            str(s.ctx_size),
            "--max-queue",
            str(s.max_queue),
            "--queue-timeout",
            str(s.queue_timeout),
            "--default-max-tokens",
            str(s.default_max_tokens),
            *launch.arguments(),
            *(["--no-speculative"] if not s.speculative else []),
            *(["--draft", str(s.draft_path)] if s.draft_path is not None and s.speculative else []),
        ]

    async def _run_once(self, launch: Launch) -> None:
        s = self.settings
        s.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = s.log_dir / f"worker-{s.model_id}.log"
        with log_path.open("ab") as log_file:
            async with trio.open_nursery() as nursery:
                # run_process terminates the child (then kills it after 5 s)
                # when this task is cancelled, so no child outlives the node.
                process: trio.Process = await nursery.start(
                    _run_process, self._command(launch), log_file
                )
                self.pid = process.pid
                try:
                    await self._watch(process)
                finally:
                    self.port = None
                    nursery.cancel_scope.cancel()
                code = process.returncode
                self.pid = None
                self.last_error = _describe_exit(code, log_path)

    async def _watch(self, process: trio.Process) -> None:
        """Wait for the ready line, serve, and return when the child exits."""
        try:
            with trio.fail_after(_READY_TIMEOUT):
                event = await ready_event(process)
        except trio.TooSlowError:
            self.last_error = f"not ready after {_READY_TIMEOUT:.0f} s"
            process.kill()
            event = None
        if event is not None:
            self.port = int(event["port"])
            self.info = event
            self._set_state("ready")
            log.info(
                "model %s ready on 127.0.0.1:%d (pid %d)", self.model_id, self.port, process.pid
            )
            # The child reports after each generation; an unread pipe would fill and stop it.
            async with aclosing(child_events(process)) as events:
                async for later in events:
                    if later.get("event") == "speculation":
                        self.speculation = {
                            k: v for k, v in later.items() if k != "event" and isinstance(v, int)
                        }
                        self._speculation_changed.set()
                        self._speculation_changed = trio.Event()
        await process.wait()


async def ready_event(process: trio.Process) -> dict[str, Any] | None:
    """The child's ``{"event": "ready", ...}`` line from its stdout; None if stdout ends
    first (it exited). Callers bound the wait."""
    async with aclosing(child_events(process)) as events:
        async for event in events:
            if event.get("event") == "ready":
                return event
    return None


async def _run_process(
    command: list[str], log_file: Any, *, task_status: trio.TaskStatus[trio.Process]
) -> None:
    env = dict(os.environ)
    env.setdefault("PYTHONUNBUFFERED", "1")
    # A ggml abort (a split's worker went away) would run gdb for seconds otherwise;
    # RDMA cannot work through the mesh tunnel.
    env.setdefault("GGML_NO_BACKTRACE", "1")
    env.setdefault("GGML_RPC_NO_RDMA", "1")
    await trio.run_process(
        command,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=log_file,
        check=False,
        env=env,
        task_status=task_status,
    )


async def child_events(process: trio.Process) -> AsyncGenerator[dict[str, Any], None]:
    """The JSON object lines the child prints (its ready line, then its events), until
    stdout ends. Lines are bounded: a longer one is dropped, not buffered."""
    assert process.stdout is not None
    buffer = b""
    async for chunk in process.stdout:
        buffer += chunk
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            event = _parse_event(line)
            if event is not None:
                yield event
        if len(buffer) > _MAX_EVENT_LINE:
            buffer = b""


def _parse_event(line: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(line)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _describe_exit(code: int | None, log_path: Path) -> str:
    if code is None:
        return "worker did not exit"
    what = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
    tail = _last_line(log_path)
    return f"{what}: {tail}" if tail else what


def _last_line(path: Path) -> str:
    try:
        with path.open("rb") as f:
            f.seek(max(0, path.stat().st_size - 4096))
            lines = [ln for ln in f.read().decode("utf-8", "replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1].strip()[:200] if lines else ""
