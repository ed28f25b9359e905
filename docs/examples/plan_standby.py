"""Which node takes a model that is in demand and has no host? Ask the planner.

``plan`` is a pure function of the mesh view: every node runs it on the same view,
so exactly one of the three standby nodes below decides to serve the model.
"""

from meshp2p.mesh import MeshView, ModelFile, PeerInfo
from meshp2p.planner import NodeState, plan

GB = 10**9


def node(
    name: str, role: str, disk: tuple[str, ...] = (), rates: dict[str, float] | None = None
) -> PeerInfo:
    files = tuple(ModelFile(m, 4 * GB, "0" * 64) for m in disk)
    return PeerInfo(
        name, (), role, (), files, 16 * GB, 16 * GB, None, 0.0, request_rates=rates or {}
    )


view = MeshView(
    "example",
    (
        node("client", "client", rates={"qwen-7b": 12.0}),  # requests entered here
        node("standby-1", "standby"),
        node("standby-2", "standby", disk=("qwen-7b",)),  # holds the file: goes first
        node("standby-3", "standby"),
    ),
)
for name in ("standby-1", "standby-2", "standby-3"):
    decision = plan(view, name, now=0.0, state=NodeState(), catalog={"qwen-7b": 4 * GB})
    print(f"{name}: {decision.action} {decision.model or ''} ({decision.reason})")
