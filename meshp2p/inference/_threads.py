"""Threads for llama.cpp's decodes of several tokens (prompts, speculative verification):
the configured number, or more while other processes leave cores idle.

llama.cpp's threads meet at a barrier for every layer, so a thread on a core that
another process keeps busy makes each layer wait for it (``make bench-threads``: a
prompt 1.4x slower with a thread on each of two cores, one of them busy, than with one
thread). That is why a node leaves a core to the rest of the machine. On a machine
whose other processes are idle, that core doubles a batch's speed on two cores: a
verification of 16 guesses takes about half as long, and so does a prompt. A worker
therefore samples how busy the machine was, apart from its own process, and uses the
idle cores for batches while they stay idle. A one-token decode keeps its threads: it
reads every weight once per token and gains little from a second core.

The thread count never changes what is computed: ggml splits each product by output
rows, and every row is the same sum whichever thread computes it (checked:
``tests/inference/test_threads.py``).
"""

from __future__ import annotations

import os
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

#: A batch takes one more thread for each this many cores that other processes left idle.
IDLE_PER_THREAD = 0.5
#: The shortest time over which idleness is measured (seconds).
WINDOW = 0.5
_PROC_STAT = "/proc/stat"


def cpu_seconds_busy(stat_line: str, hz: int) -> float:
    """CPU seconds all cores spent busy, from /proc/stat's ``cpu`` line (not idle, not
    waiting for I/O)."""
    fields = [int(x) for x in stat_line.split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    total = sum(fields[:8])  # user nice system idle iowait irq softirq steal
    return (total - idle) / hz


def batch_threads(base: int, most: int, others_busy: float, cores: int) -> int:
    """Threads for a batch: ``base``, plus one for each ``IDLE_PER_THREAD`` cores beyond
    ``base`` that other processes used none of, up to ``most``. ``others_busy``: the cores
    other processes kept busy (0.3: a third of one core)."""
    spare = cores - base - max(0.0, others_busy)
    extra = int(spare // IDLE_PER_THREAD) if spare > 0 else 0
    return max(base, min(most, base + extra))


@dataclass
class _Sample:
    at: float
    busy: float  # the machine's busy CPU seconds
    own: float  # this process's CPU seconds


def _own_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class BatchThreads:
    """Chooses, before each batch, how many threads it runs on (``choose``) and sets
    them on a loaded ``Llama`` (``apply``). With ``most <= base``, or where /proc/stat
    cannot be read, always ``base``."""

    def __init__(
        self,
        base: int,
        most: int,
        *,
        cores: int | None = None,
        read_stat: Callable[[], str] | None = None,
        own_seconds: Callable[[], float] = _own_seconds,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.base = base
        self.most = max(base, most)
        self.cores = cores or os.cpu_count() or 1
        self._read_stat = read_stat or _read_proc_stat
        self._own_seconds = own_seconds
        self._clock = clock
        self._hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self._last = self._sample()
        #: Cores other processes kept busy over the last window measured.
        self.others_busy: float | None = None
        self._current: int | None = None

    def _sample(self) -> _Sample | None:
        if self.most <= self.base:
            return None
        try:
            line = self._read_stat()
            return _Sample(self._clock(), cpu_seconds_busy(line, self._hz), self._own_seconds())
        except (OSError, ValueError, IndexError):
            return None

    def choose(self) -> int:
        if self._last is None:
            return self.base
        now = self._clock()
        if now - self._last.at >= WINDOW:
            sample = self._sample()
            if sample is None:
                return self.base
            elapsed = sample.at - self._last.at
            others = (sample.busy - self._last.busy) - (sample.own - self._last.own)
            self.others_busy = max(0.0, others / elapsed)
            self._last = sample
        if self.others_busy is None:
            return self.base
        return batch_threads(self.base, self.most, self.others_busy, self.cores)

    def apply(self, llama: Any, generation_threads: int) -> int:
        """Set the batch threads of ``llama`` to ``choose()`` (when it changed)."""
        threads = self.choose()
        if threads != self._current:
            import llama_cpp

            llama_cpp.llama_set_n_threads(llama._ctx.ctx, generation_threads, threads)
            self._current = threads
        return threads


def _read_proc_stat() -> str:
    with open(_PROC_STAT) as stat:
        return stat.readline()
