"""Demand: requests per model per minute, decayed over about a minute. Pure.

Every node counts the API requests that enter the mesh through it (answered
locally, forwarded, or for a model nobody serves: *wanted*), never those another
node forwarded to it, so summing the rates of all nodes counts each request once.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

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
