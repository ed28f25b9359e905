"""Demand-aware placement: which model each node serves, from the mesh view alone.

- ``DemandMeter``: requests per model per minute entering the mesh at a node,
  decayed over about a minute (gossiped as ``request_rates``); ``mesh_demand``
  sums them over a view, and ``view_demand`` reads a view's demand whichever way it
  travelled (announced rates, or in a large mesh push-sum: ``meshp2p.mesh.PushSum``).
- ``plan``: a pure function of the ``MeshView``, a node, its ``NodeState`` and the
  time, returning a ``Decision`` (serve, switch or stay, with the reason). Every
  node runs it on the same view and acts only on its own part; the simulator
  (``make bench-sim``) runs the same function for a thousand simulated nodes.
"""

from ._demand import (
    AnnouncedRates,
    DemandMeter,
    mesh_demand,
    quantize,
    view_demand,
    wanted_only,
)
from ._planner import (
    DEFAULT_PARAMS,
    Decision,
    Need,
    NodeState,
    PlannerParams,
    Round,
    assign_standby,
    hosts_of,
    needs,
    plan,
    plan_round,
)

__all__ = [
    "DEFAULT_PARAMS",
    "AnnouncedRates",
    "Decision",
    "DemandMeter",
    "Need",
    "NodeState",
    "PlannerParams",
    "Round",
    "assign_standby",
    "hosts_of",
    "mesh_demand",
    "needs",
    "plan",
    "plan_round",
    "quantize",
    "view_demand",
    "wanted_only",
]
