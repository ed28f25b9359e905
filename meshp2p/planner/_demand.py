"""Demand: requests per model per minute, decayed over about a minute. Pure.

Every node counts the API requests that enter the mesh through it (answered
locally, forwarded, or for a model nobody serves: *wanted*), never those another
node forwarded to it, so summing the rates of all nodes counts each request once.
"""

from __future__ import annotations

import math
from collections.abc import Container, Iterable, Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..mesh._state import MeshView

#: The time constant of the decay: a steady rate is reached to 63 % after this.
TAU_S = 60.0
#: Rates below this are dropped (and not gossiped).
MIN_RATE = 0.05
#: Models tracked at once; the least demanded go first.
MAX_MODELS = 64


class DemandMeter:
    """An exponentially decayed count of requests per model, as requests per minute.

    A steady arrival rate of ``r`` per minute reads ``r`` after a few ``tau``; one
    request reads ``60 / tau`` at once and decays from there.
    """

    def __init__(self, tau: float = TAU_S) -> None:
        self.tau = tau
        self._level: dict[str, tuple[float, float]] = {}  # model -> (level, at)

    def record(self, model: str, now: float) -> None:
        level, at = self._level.get(model, (0.0, now))
        self._level[model] = (level * math.exp(-(now - at) / self.tau) + 1.0, now)
        if len(self._level) > MAX_MODELS:
            weakest = min(self._level, key=lambda m: self._decayed(m, now))
            del self._level[weakest]

    def _decayed(self, model: str, now: float) -> float:
        level, at = self._level[model]
        return level * math.exp(-(now - at) / self.tau)

    def rates(self, now: float) -> dict[str, float]:
        """Requests per minute per model, rounded to 0.1 so that gossip does not change
        with every decay step; models below ``MIN_RATE`` are forgotten."""
        out: dict[str, float] = {}
        for model in list(self._level):
            rate = self._decayed(model, now) * 60.0 / self.tau
            if rate < MIN_RATE:
                del self._level[model]
            else:
                out[model] = round(rate, 1)
        return {m: r for m, r in out.items() if r > 0}


def mesh_demand(rates: Iterable[Mapping[str, float]]) -> dict[str, float]:
    """The mesh's demand per model: the sum of every node's rates."""
    total: dict[str, float] = {}
    for node in rates:
        for model, rate in node.items():
            total[model] = total.get(model, 0.0) + float(rate)
    return total


def view_demand(view: MeshView) -> dict[str, float]:
    """The mesh's demand per model as ``view`` knows it: the sum of the announced rates,
    or, in a large mesh, the push-sum estimate (``view.demand``) where that is higher
    (there, nodes announce only demand for models nobody serves yet)."""
    total = mesh_demand(p.request_rates for p in view)
    for model, rate in (view.demand or {}).items():
        if rate > total.get(model, 0.0):
            total[model] = rate
    return total


def wanted_only(
    rates: Mapping[str, float],
    unhosted: Container[str],
    mine: Container[str],
    elsewhere: Container[str],
) -> dict[str, float]:
    """What a node of a large mesh announces of its rates: only models nobody serves or
    loads (the planner must hear of them at once), and of those only the ones no other
    node announces already (``elsewhere``) unless this node announced them first
    (``mine``): one announcement per new model, not one per node that saw a request.
    The rest of the demand travels by push-sum."""
    return {m: r for m, r in rates.items() if m in unhosted and (m in mine or m not in elsewhere)}


#: Announced rates are rounded to quarter-decades (1, 1.8, 3.2, 5.6, 10, 18, ...).
_STEPS_PER_DECADE = 4
#: A lower or slightly higher rate waits this long before it is announced.
REANNOUNCE_S = 300.0


def quantize(rate: float) -> float:
    """The announced value of a rate: the nearest quarter-decade, 0 below 0.5."""
    if rate < 0.5:
        return 0.0
    step = round(math.log10(rate) * _STEPS_PER_DECADE)
    return float(f"{10 ** (step / _STEPS_PER_DECADE):.2g}")


def _step(rate: float) -> int:
    return round(math.log10(rate) * _STEPS_PER_DECADE) if rate > 0 else -(10**6)


#: An increase to at least this rate (requests per minute) is announced at once.
URGENT_RATE = 10.0


class AnnouncedRates:
    """What a node gossips of its demand, changing seldom enough that a mesh of many
    nodes is not flooded with it: rates are quantized; demand for a model nobody
    serves, or a rise of two steps (x1.8) to ``URGENT_RATE`` or more, is announced at
    once; anything else at most every ``min_interval`` seconds."""

    def __init__(self, min_interval: float = REANNOUNCE_S) -> None:
        self.min_interval = min_interval
        self.current: dict[str, float] = {}
        self.changed_at = -math.inf
        self.changes = 0

    def update(
        self, rates: Mapping[str, float], now: float, unhosted: Container[str] = ()
    ) -> dict[str, float]:
        """The rates to announce now; ``unhosted``: models no node serves or loads."""
        wanted = {m: q for m, r in rates.items() if (q := quantize(r)) > 0}
        if wanted == self.current:
            return self.current
        urgent = any(
            (m in unhosted and m not in self.current)
            or (q >= URGENT_RATE and _step(q) - _step(self.current.get(m, 0.0)) >= 2)
            for m, q in wanted.items()
        )
        if urgent or now - self.changed_at >= self.min_interval:
            self.current, self.changed_at = wanted, now
            self.changes += 1
        return self.current
