"""The rule for joining another mesh at run time (pure): who may leave, and why not."""

from __future__ import annotations

import pytest

from meshp2p.node._join import JoinSituation, join_refusal

HERE = "a" * 16
THERE = "b" * 16


def refusal(**fields: object) -> str | None:
    error = join_refusal(JoinSituation(mesh_id=HERE, **fields), THERE)  # type: ignore[arg-type]
    return None if error is None else str(error)


@pytest.mark.parametrize(
    "fields",
    [
        {},  # a fresh node alone in its mesh
        {"serving": ("gemma",)},  # alone with its model: the model comes along
        {"others": 3},  # standby in a mesh of four, lending nothing
    ],
)
def test_a_node_nobody_depends_on_may_join(fields: dict[str, object]) -> None:
    assert refusal(**fields) is None


def test_a_host_serving_others_is_refused_and_told_what_to_do() -> None:
    message = refusal(serving=("gemma",), others=2)
    assert message is not None
    assert "serves gemma to the 2 other nodes of mesh " + HERE in message
    assert "--standby" in message


def test_lending_memory_to_a_split_is_refused() -> None:
    message = refusal(lending=(("12D3KooWhostnode1234", 1_500_000_000),), others=1)
    assert message is not None and "lends 1.5 GB to the split of host node1234" in message


def test_running_a_split_is_refused() -> None:
    message = refusal(splits=(("big", 2),), serving=("big",))
    assert message is not None and "runs big split over 2 other nodes" in message


def test_requests_in_flight_are_refused() -> None:
    assert "1 API request is in flight" in (refusal(inflight=1) or "")


def test_a_publishing_node_is_refused() -> None:
    assert "--publish" in (refusal(publishing=True) or "")


def test_same_mesh_stopping_and_joining_are_refused_with_their_codes() -> None:
    same = join_refusal(JoinSituation(mesh_id=THERE), THERE)
    assert same is not None and same.code == "same_mesh"
    stopping = join_refusal(JoinSituation(mesh_id=HERE, stopping=True), THERE)
    assert stopping is not None and stopping.code == "join_refused"
    assert "already joining" in (refusal(joining=True) or "")


class FakeId:
    def __init__(self, text: str) -> None:
        self.text = text

    def to_base58(self) -> str:
        return self.text


def test_situation_reads_what_others_get_from_a_running_node() -> None:
    from collections import Counter
    from types import SimpleNamespace

    from meshp2p.node._join import situation

    mesh = SimpleNamespace(
        view=lambda: [SimpleNamespace(id="me"), SimpleNamespace(id="peer")],
        connections=lambda: [{"peer": "client"}, {"peer": "peer"}],
        # A member whose connection is gone (a client that left) is not counted.
        members={FakeId("client"): 0.0, FakeId("gone"): 0.0, FakeId("peer"): 0.0},
    )
    split = SimpleNamespace(model_id="big", launch=SimpleNamespace(info={"mode": "split"}))
    solo = SimpleNamespace(model_id="small", launch=SimpleNamespace(info={"mode": "solo"}))
    node = SimpleNamespace(
        node_id="me",
        mesh=mesh,
        table=None,
        tensor_server=SimpleNamespace(status=lambda: [{"host": "h", "memory": 5}]),
        workers=[split, solo],
        plans={"big": SimpleNamespace(workers=(1, 2))},
        router=SimpleNamespace(inflight=Counter({"me": 2, "peer": 1})),
        credentials=SimpleNamespace(mesh_id=HERE),
        stopping=False,
        membership=SimpleNamespace(joining=False),
        config=SimpleNamespace(publish=False),
    )
    now = situation(node)  # type: ignore[arg-type]
    assert now == JoinSituation(
        mesh_id=HERE,
        lending=(("h", 5),),
        splits=(("big", 2),),
        serving=("big", "small"),
        others=2,
        inflight=3,
    )
