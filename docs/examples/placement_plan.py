"""Where would a 20 GB model run? ``plan_placement`` answers from a mesh view alone.

The planner is a pure function of a ``MeshView``: the same code runs in a node and
in a simulator. Here the host has 12 GB free, so it borrows memory from the
standby nodes nearest to it (under 80 ms), in proportion to what each offers.
"""

from meshp2p.mesh import MeshView, PeerInfo
from meshp2p.tensor import plan_placement

GB = 10**9


def node(name: str, role: str, free: int, rtt_ms: float | None) -> PeerInfo:
    return PeerInfo(name, (), role, (), (), free, free, rtt_ms, last_seen=0.0)


view = MeshView(
    "example",
    (
        node("host", "host", 12 * GB, None),
        node("near", "standby", 8 * GB, 4.0),
        node("far", "standby", 64 * GB, 140.0),  # over the 80 ms cap: never used
        node("next", "standby", 6 * GB, 9.0),
    ),
)
plan = plan_placement(
    view,
    host_id="host",
    model_id="big-model",
    model_size=20 * GB,
    model_sha256="0" * 64,
    n_layers=40,
    host_only_bytes=GB // 2,
)
print(f"{plan.mode}: {plan.reason}")
print(f"host keeps {len(plan.host_layers)} layers")
for worker in plan.workers:
    print(f"{worker.node_id} takes layers {worker.layers.start}-{worker.layers.stop - 1}")
