"""Mesh-wide demand in a large mesh by push-sum gossip. Pure (the wall time is a parameter).

See ``PushSum``; the service sends a ``_gossip.DemandShare`` each heartbeat, and the
planner reads the estimate as ``MeshView.demand`` (``meshp2p.planner.view_demand``).
"""

from __future__ import annotations

from collections.abc import Mapping

from ._gossip import MAX_REQUEST_RATES

#: Push-sum restarts every this many heartbeats: with one share a heartbeat on an
#: overlay of degree 8, 24 rounds bring every node of a 1,000-node mesh within 1 % of
#: the mean (12 rounds: 30 % off on the worst node; tests/mesh/test_pushsum.py).
EPOCH_HEARTBEATS = 24
#: The epoch at the default 5-second heartbeat, in seconds of wall time (so that all
#: nodes agree on it without talking).
EPOCH_S = 120.0


class PushSum:
    """Mesh-wide demand by push-sum gossip (Kempe, Dobra and Gehrke, 2003). Pure.

    Every epoch each node starts with its own rates as sums and weight 1; every
    heartbeat it keeps half of both and sends the other half to one random gossip
    link (``share``, carried by a ``DemandShare``); what arrives is added
    (``receive``). Sums over weight converge on every node to the mean rate per
    node, in O(log N) rounds; at the end of an epoch that mean is kept as the
    estimate, and times the number of members it is the mesh's demand. Each node
    then sends one small message per heartbeat, whatever the mesh's size, instead
    of flooding its rates to every node.

    Shares of another epoch are dropped, but for the next one (a clock a little
    ahead), which starts ours early. A node that dies takes its mass with it; the next
    epoch starts afresh.
    """

    def __init__(self, epoch_s: float = EPOCH_S) -> None:
        self.epoch_s = epoch_s
        self.epoch = -1
        self.weight = 0.0
        self.sums: dict[str, float] = {}
        #: The mean rate per node at the end of the last epoch that had a weight.
        self.mean: dict[str, float] = {}

    def _roll(self, wall: float, rates: Mapping[str, float], at: int | None = None) -> None:
        epoch = int(wall // self.epoch_s) if at is None else at
        if epoch <= self.epoch:
            return
        if self.epoch >= 0 and self.weight > 0:
            self.mean = {m: v / self.weight for m, v in self.sums.items() if v > 0}
        self.epoch, self.weight = epoch, 1.0
        self.sums = {m: float(r) for m, r in rates.items() if r > 0}

    def share(self, wall: float, rates: Mapping[str, float]) -> tuple[int, float, dict[str, float]]:
        """Half of this node's mass, to send to one gossip link now."""
        self._roll(wall, rates)
        self.weight /= 2
        self.sums = {m: v / 2 for m, v in self.sums.items()}
        return self.epoch, self.weight, dict(self.sums)

    def receive(
        self,
        epoch: int,
        weight: float,
        sums: Mapping[str, float],
        wall: float,
        rates: Mapping[str, float],
    ) -> bool:
        """Add a share from a peer. False if it was for another epoch (dropped)."""
        self._roll(wall, rates)
        if epoch == self.epoch + 1:
            self._roll(wall, rates, at=epoch)
        if epoch != self.epoch:
            return False
        self.weight += weight
        for model, value in sums.items():
            if model in self.sums or len(self.sums) < MAX_REQUEST_RATES:
                self.sums[model] = self.sums.get(model, 0.0) + value
        return True

    def estimate(self, members: int) -> dict[str, float]:
        """The mesh's demand per model: the mean per node times ``members``."""
        return {m: round(v * members, 2) for m, v in self.mean.items()}
