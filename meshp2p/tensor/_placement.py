"""How a model runs: solo on its host, or with its layers split over nearby workers.

A pure function of a mesh view: no I/O, no clock. The rule (``plan_placement``):

1. **Solo** when the host's free memory (as announced, so already capped by
   ``--max-vram``) is at least ``required = ceil(model_size x headroom)``. Splitting
   always costs speed, so a model that fits is never split.
2. Otherwise the host adds **workers**, nearest first, until the host's free memory
   plus theirs reaches ``required``. A worker is a candidate when it is another node
   whose role is ``standby`` or ``worker`` (never a host serving something else, never
   a client), whose RTT is known, finite and below ``rtt_cap_ms`` (80 ms), and whose
   free memory holds at least one layer (``ceil(layer_bytes x headroom)``, layers taken
   as equal: ``layer_bytes = ceil((model_size - host_only_bytes) / n_layers)``).
3. **Nearest first, disk breaks near-ties.** Candidates are ranked by RTT, except that
   one that already holds the model's GGUF file (same sha256 in ``models_on_disk``)
   ranks as if its RTT were ``disk_tie_ms`` (2 ms) lower: a holder beats a non-holder
   whose RTT is less than 2 ms lower, because it loads from its own disk instead of
   over the network. Exact ties go to the holder, then to the lower node id, so the
   plan never depends on the order of peers in the view.
4. **Layers** are split in proportion to memory, in contiguous blocks, with the
   largest-remainder method: each worker's weight is its free memory; the host's is its
   free memory minus ``ceil(host_only_bytes x headroom)``, since it alone keeps the
   token embeddings and the output layer. A worker whose share rounds to zero layers
   would carry nothing: it is dropped and step 2 runs again without it.
5. **Never raises for a mesh that is too small**: ``missing_bytes`` says how many
   more bytes of free memory the plan needs (``required - capacity``). A plan with
   ``missing_bytes > 0`` shows the best layout the mesh allows and must not be run.
   A host whose free memory is below its own tensors' share still hosts the split:
   it gets no layers, and keeps embeddings and output layer anyway (a split loads them
   into the host's system memory, not a device, see ``_llamacpp.split_model_params``).

The host holds the first block of layers and the workers the following blocks, in plan
order: that is how ``meshp2p.inference._llamacpp`` loads a split (the host CPU takes the layers that
``n_gpu_layers`` leaves over, which are the first ones; RPC devices take the rest in
registration order; a tensor override keeps the output layer home). See ``tensor_split``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Literal

from .._sizes import format_size
from ..mesh._state import MeshView, PeerInfo

RTT_CAP_MS = 80.0
HEADROOM = 1.1
DISK_TIE_MS = 2.0
CANDIDATE_ROLES = frozenset(("standby", "worker"))

PlacementMode = Literal["solo", "split"]


@dataclass(frozen=True)
class LayerAssignment:
    """One worker's part of a split: a contiguous block of the model's repeating layers."""

    node_id: str
    layers: range
    memory: int
    """The worker's free memory in bytes, as announced, that the plan counted on."""
    rtt_ms: float


@dataclass(frozen=True)
class PlacementPlan:
    """How ``model`` runs on ``host``: alone (``solo``) or with ``workers`` (``split``).

    ``mode`` describes the layout; ``missing_bytes > 0`` means the layout does not fit and
    must not be run (``fits`` is False). ``host_layers`` is the first block; ``workers``
    follow in layer order, which is also the order their RPC devices must be registered in
    (see ``tensor_split``).
    """

    model: str
    host: str
    mode: PlacementMode
    workers: tuple[LayerAssignment, ...]
    host_layers: range
    host_memory: int
    """The host's free memory in bytes, as announced."""
    required_bytes: int
    """``ceil(model_size x headroom)``."""
    missing_bytes: int
    reason: str
    """One line saying why this layout (``"split: host has 3.0 GB free, needs 5.5 GB"``)."""

    @property
    def fits(self) -> bool:
        return self.missing_bytes == 0

    @property
    def capacity_bytes(self) -> int:
        """Free memory of the host and its workers together."""
        return self.host_memory + sum(w.memory for w in self.workers)

    @property
    def n_layers(self) -> int:
        return len(self.host_layers) + sum(len(w.layers) for w in self.workers)


def plan_placement(
    view: MeshView,
    *,
    host_id: str,
    model_id: str,
    model_size: int,
    model_sha256: str,
    n_layers: int,
    host_only_bytes: int,
    rtt_cap_ms: float = RTT_CAP_MS,
    headroom: float = HEADROOM,
    disk_tie_ms: float = DISK_TIE_MS,
) -> PlacementPlan:
    """Decide how ``model_id`` runs on ``host_id`` (see the module docstring for the rule).

    ``model_size`` is the GGUF's size in bytes, ``n_layers`` its repeating layers
    (``block_count``), ``host_only_bytes`` the bytes of the tensors that stay on the host
    (token embeddings, output norm and output layer). ``headroom`` is taken as the decimal
    it prints as (1.1 is exactly 11/10), so byte counts are exact integers.

    Raises ValueError only for arguments no caller should pass: a host missing from the
    view, ``n_layers < 1``, sizes out of range.
    """
    host = view.peer(host_id)
    if host is None:
        raise ValueError(f"host {host_id!r} is not in the mesh view")
    if n_layers < 1:
        raise ValueError(f"a model needs at least one layer, not {n_layers}")
    if model_size < 0 or not 0 <= host_only_bytes <= model_size:
        raise ValueError("need 0 <= host_only_bytes <= model_size")
    if not (1 <= headroom < math.inf and rtt_cap_ms > 0 and disk_tie_ms >= 0):
        raise ValueError("need a finite headroom >= 1, rtt_cap_ms > 0 and disk_tie_ms >= 0")

    factor = Fraction(str(headroom))
    required = math.ceil(model_size * factor)
    host_required = math.ceil(host_only_bytes * factor)
    if host.memory_free >= required:
        return PlacementPlan(
            model=model_id,
            host=host_id,
            mode="solo",
            workers=(),
            host_layers=range(n_layers),
            host_memory=host.memory_free,
            required_bytes=required,
            missing_bytes=0,
            reason=(
                f"solo: host has {format_size(host.memory_free)} free, "
                f"needs {format_size(required)} (size x {headroom})"
            ),
        )

    layer_bytes = math.ceil(Fraction(model_size - host_only_bytes, n_layers))
    min_worker_memory = max(1, math.ceil(layer_bytes * factor))
    ranked = sorted(
        (p for p in view if _is_candidate(p, host_id, rtt_cap_ms, min_worker_memory)),
        key=lambda p: _rank(p, model_sha256, disk_tie_ms),
    )
    host_weight = max(0, host.memory_free - host_required)

    dropped: set[str] = set()
    while True:
        chosen: list[PeerInfo] = []
        capacity = host.memory_free
        for peer in ranked:
            if capacity >= required:
                break
            if peer.id not in dropped:
                chosen.append(peer)
                capacity += peer.memory_free
        counts = _apportion(n_layers, [host_weight] + [p.memory_free for p in chosen])
        idle = {p.id for p, count in zip(chosen, counts[1:], strict=True) if count == 0}
        if not idle:
            break
        dropped |= idle

    workers: list[LayerAssignment] = []
    start = counts[0]
    for peer, count in zip(chosen, counts[1:], strict=True):
        assert peer.rtt_ms is not None
        workers.append(
            LayerAssignment(peer.id, range(start, start + count), peer.memory_free, peer.rtt_ms)
        )
        start += count
    missing = max(0, required - capacity)
    return PlacementPlan(
        model=model_id,
        host=host_id,
        mode="split" if workers else "solo",
        workers=tuple(workers),
        host_layers=range(counts[0]),
        host_memory=host.memory_free,
        required_bytes=required,
        missing_bytes=missing,
        reason=_reason(host.memory_free, required, len(workers), missing, headroom),
    )


def tensor_split(plan: PlacementPlan) -> list[float]:
    """Each node's share of the layers, in the order ``[host, worker 1, …, worker k]``.

    The entries are whole layer counts (llama.cpp and ``_llamacpp.split_layers`` only use
    their proportions, and whole counts reproduce the plan exactly); a solo plan gives
    ``[n_layers]``. ``_llamacpp.split_layers(plan.n_layers, tensor_split(plan))`` turns
    them into llama.cpp's ``n_gpu_layers`` and per-device ``tensor_split``.

    The order is an assumption the node must make true: the host's layers are the first
    ones, which llama.cpp keeps on the CPU when ``n_gpu_layers`` leaves them over
    (vendored ``src/llama-model.cpp`` 1589-1600), and worker *i*'s RPC device must be the
    *i*-th RPC device in the model's device list, which is the order the node registered
    the workers' endpoints in (``src/llama.cpp`` 275-279: RPC devices first, in registry
    order, then local GPUs). A host whose own GPU should take layers does not fit this
    order: its GPU would come after the RPC devices.
    """
    return [float(len(plan.host_layers))] + [float(len(w.layers)) for w in plan.workers]


def _is_candidate(peer: PeerInfo, host_id: str, rtt_cap_ms: float, min_memory: int) -> bool:
    return (
        peer.id != host_id
        and peer.role in CANDIDATE_ROLES
        and peer.rtt_ms is not None
        and 0 <= peer.rtt_ms < rtt_cap_ms
        and peer.memory_free >= min_memory
    )


def _rank(peer: PeerInfo, sha256: str, disk_tie_ms: float) -> tuple[float, bool, float, str]:
    assert peer.rtt_ms is not None
    holds = any(m.sha256 == sha256 for m in peer.models_on_disk)
    return (peer.rtt_ms - (disk_tie_ms if holds else 0.0), not holds, peer.rtt_ms, peer.id)


def _apportion(total: int, weights: Sequence[int]) -> list[int]:
    """``total`` seats in proportion to ``weights`` by largest remainder, ties to the earlier.

    All weights zero: every seat goes to the first entry (the host).
    """
    whole = sum(weights)
    if whole == 0:
        return [total] + [0] * (len(weights) - 1)
    counts = [total * w // whole for w in weights]
    by_remainder = sorted(range(len(weights)), key=lambda i: (-(total * weights[i] % whole), i))
    for i in by_remainder[: total - sum(counts)]:
        counts[i] += 1
    return counts


def _reason(free: int, required: int, n_workers: int, missing: int, headroom: float) -> str:
    need = f"host has {format_size(free)} free, needs {format_size(required)} (size x {headroom})"
    if missing:
        return f"does not fit: {need}; the mesh is {format_size(missing)} short"
    return f"split over {n_workers} worker{'s' if n_workers != 1 else ''}: {need}"
