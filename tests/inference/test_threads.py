"""Threads for batches: more while other processes leave cores idle, and the same
logits whatever the count (so speculation's text does not depend on the machine's load)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import llama_cpp
import pytest
from test_speculative import COPY_PROMPT, finish

from meshp2p.inference._engine import Engine
from meshp2p.inference._models import ModelStore
from meshp2p.inference._threads import (
    WINDOW,
    BatchThreads,
    batch_threads,
    cpu_seconds_busy,
)
from meshp2p.inference._worker_child import load_model
from meshp2p.node._config import default_threads, idle_batch_threads


def test_a_batch_takes_the_cores_other_processes_leave_idle() -> None:
    # Two cores, one generation thread: the second core joins when nothing else runs.
    assert batch_threads(1, 2, others_busy=0.0, cores=2) == 2
    assert batch_threads(1, 2, others_busy=0.4, cores=2) == 2
    assert batch_threads(1, 2, others_busy=0.6, cores=2) == 1
    assert batch_threads(1, 2, others_busy=1.8, cores=2) == 1
    # Eight cores, seven threads: other processes keep one core busy.
    assert batch_threads(7, 8, others_busy=1.0, cores=8) == 7
    assert batch_threads(7, 8, others_busy=0.2, cores=8) == 8
    # Sixteen cores, two models, 7 threads each, up to 8: as idle allows.
    assert batch_threads(7, 8, others_busy=7.0, cores=16) == 8
    assert batch_threads(7, 8, others_busy=8.7, cores=16) == 7
    # Never below the configured count, never above the most.
    assert batch_threads(3, 2, others_busy=0.0, cores=4) == 3
    assert batch_threads(1, 4, others_busy=0.0, cores=16) == 4


def test_busy_seconds_are_read_from_proc_stats_cpu_line() -> None:
    # user nice system idle iowait irq softirq steal guest guest_nice
    line = "cpu  100 5 50 800 20 3 2 0 7 0"
    assert cpu_seconds_busy(line, hz=100) == pytest.approx((100 + 5 + 50 + 3 + 2) / 100)


class _Machine:
    """A /proc/stat to read, two cores: ``run(seconds, others, own)`` advances time with
    ``others`` cores busy by other processes and ``own`` by this one."""

    def __init__(self) -> None:
        self.now = 0.0
        self.busy = 0.0
        self.idle = 0.0
        self.own = 0.0

    def run(self, seconds: float, others: float, own: float) -> None:
        self.now += seconds
        self.busy += (others + own) * seconds
        self.own += own * seconds
        self.idle += (2 - others - own) * seconds

    def stat(self) -> str:
        return f"cpu  {round(self.busy * 100)} 0 0 {round(self.idle * 100)} 0 0 0 0"

    def batch_threads(self) -> BatchThreads:
        """One generation thread, up to two for a batch, reading this machine."""
        return BatchThreads(
            1, 2, cores=2, read_stat=self.stat, own_seconds=lambda: self.own, clock=lambda: self.now
        )


def test_the_choice_follows_what_other_processes_use_not_this_one() -> None:
    machine = _Machine()
    threads = machine.batch_threads()
    assert threads.choose() == 1  # nothing measured yet
    # This worker decoded on both cores for a second; nothing else ran.
    machine.run(1.0, others=0.0, own=2.0)
    assert threads.choose() == 2
    assert threads.others_busy == pytest.approx(0.0)
    # Another process takes a core.
    machine.run(1.0, others=1.0, own=1.0)
    assert threads.choose() == 1
    assert threads.others_busy == pytest.approx(1.0)
    # Within a window the last measure holds.
    machine.run(WINDOW / 2, others=0.0, own=0.0)
    assert threads.choose() == 1
    machine.run(WINDOW, others=0.0, own=1.0)
    assert threads.choose() == 2


def test_without_room_or_without_proc_stat_the_count_is_the_configured_one() -> None:
    assert BatchThreads(2, 2, cores=2).choose() == 2

    def unreadable() -> str:
        raise OSError("no /proc here")

    assert BatchThreads(1, 2, cores=2, read_stat=unreadable).choose() == 1


def test_on_this_machine_the_choice_is_within_bounds() -> None:
    threads = BatchThreads(1, 2, cores=2)
    assert threads.choose() in (1, 2)


@pytest.fixture(scope="module")
def gemma(tmp_path_factory: pytest.TempPathFactory) -> Any:
    path: Path = ModelStore(tmp_path_factory.mktemp("home")).ensure_default().path
    return load_model(str(path), threads=1, ctx_size=1024)


def test_a_batch_computes_the_same_logits_on_one_thread_or_two(gemma: Any) -> None:
    tokens = gemma.tokenize(COPY_PROMPT.encode(), add_bos=True)[:240]
    head, tail = tokens[:-16], tokens[-16:]
    runs = []
    for count in (1, 2, 1):
        llama_cpp.llama_set_n_threads(gemma._ctx.ctx, 1, count)
        gemma.reset()
        gemma.eval(head)
        gemma._batch.set_batch(batch=tail, n_past=gemma.n_tokens, logits_all=True)
        gemma._ctx.decode(gemma._batch)
        runs.append([list(gemma._ctx.get_logits_ith(i)[: gemma.n_vocab()]) for i in range(16)])
    assert runs[0] == runs[1] == runs[2]  # bit for bit


def test_speculation_on_a_spare_core_answers_as_plain_decoding(gemma: Any) -> None:
    """An idle machine as the worker sees it: batches on two threads."""
    machine = _Machine()
    threads = machine.batch_threads()
    machine.run(1.0, others=0.0, own=1.0)
    params = {"prompt": COPY_PROMPT, "max_tokens": 64, "temperature": 0}
    fast = finish(Engine(gemma, batch_threads=threads), params)
    assert threads._current == 2
    llama_cpp.llama_set_n_threads(gemma._ctx.ctx, 1, 1)
    plain = finish(Engine(gemma, speculative=False), params)
    assert fast.text == plain.text


def test_a_node_lets_batches_take_every_core_its_models_share() -> None:
    assert default_threads(1, 2) == (1, 1)
    assert idle_batch_threads(1, 2) == 2
    assert default_threads(2, 16) == (7, 7)
    assert idle_batch_threads(2, 16) == 8
    assert idle_batch_threads(3, 2) == 1  # more models than cores: one each
