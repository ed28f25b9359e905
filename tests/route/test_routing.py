"""The host-choice rule: a pure function of the candidates and the prompt's start."""

from __future__ import annotations

from collections import Counter

from hypothesis import given
from hypothesis import strategies as st

from meshp2p.route._routing import AFFINITY_SLACK, Candidate, affinity_key, order_hosts


def ids(candidates: list[Candidate]) -> list[str]:
    return [c.node_id for c in candidates]


def test_fewest_in_flight_first_then_lowest_rtt() -> None:
    hosts = [
        Candidate("a", inflight=2, rtt_ms=1.0),
        Candidate("b", inflight=0, rtt_ms=30.0),
        Candidate("c", inflight=0, rtt_ms=5.0),
    ]
    assert ids(order_hosts(hosts, None)) == ["c", "b", "a"]


def test_this_node_counts_as_nearest_and_unknown_rtt_as_farthest() -> None:
    hosts = [
        Candidate("far", 0, None),
        Candidate("near", 0, 2.0),
        Candidate("self", 0, None, local=True),
    ]
    assert ids(order_hosts(hosts, None)) == ["self", "near", "far"]


def test_recently_failed_hosts_go_last_and_never_win_affinity() -> None:
    hosts = [Candidate("a", 0, 1.0, penalized=True), Candidate("b", 5, 50.0)]
    assert ids(order_hosts(hosts, None)) == ["b", "a"]
    for i in range(50):
        assert order_hosts(hosts, f"prompt {i}".encode())[0].node_id == "b"


def test_same_prompt_start_goes_to_the_same_host_whatever_the_order() -> None:
    hosts = [Candidate(f"node-{i}", 0, float(i)) for i in range(5)]
    key = affinity_key("completion", {"prompt": "You are a helpful assistant. " * 30})
    first = order_hosts(hosts, key)[0].node_id
    assert order_hosts(list(reversed(hosts)), key)[0].node_id == first


def test_different_prompts_spread_over_the_hosts() -> None:
    hosts = [Candidate("a", 0, 1.0), Candidate("b", 0, 1.0), Candidate("c", 0, 1.0)]
    chosen = Counter(
        order_hosts(hosts, affinity_key("completion", {"prompt": f"topic {i}"}))[0].node_id
        for i in range(300)
    )
    assert set(chosen) == {"a", "b", "c"}
    assert min(chosen.values()) > 50


def test_affinity_yields_to_a_much_less_busy_host() -> None:
    key = b"k" * 32
    idle = [Candidate("a", 0, 1.0), Candidate("b", 0, 1.0)]
    preferred = order_hosts(idle, key)[0].node_id
    other = "b" if preferred == "a" else "a"
    slightly = [Candidate(preferred, AFFINITY_SLACK, 1.0), Candidate(other, 0, 1.0)]
    assert order_hosts(slightly, key)[0].node_id == preferred
    busy = [Candidate(preferred, AFFINITY_SLACK + 1, 1.0), Candidate(other, 0, 1.0)]
    assert order_hosts(busy, key)[0].node_id == other


def test_long_system_prompt_alone_decides_the_key() -> None:
    system = {"role": "system", "content": "Rules of the house. " * 40}
    one = affinity_key("chat", {"messages": [system, {"role": "user", "content": "hi"}]})
    two = affinity_key("chat", {"messages": [system, {"role": "user", "content": "bye"}]})
    assert one == two


def test_short_system_prompt_keys_each_conversation_for_all_its_turns() -> None:
    system = {"role": "system", "content": "Be brief."}
    one = affinity_key("chat", {"messages": [system, {"role": "user", "content": "hi"}]})
    two = affinity_key("chat", {"messages": [system, {"role": "user", "content": "bye"}]})
    later = affinity_key(
        "chat",
        {
            "messages": [
                system,
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "hello"},
                {"role": "user", "content": "more"},
            ]
        },
    )
    assert one != two
    # The same conversation a turn later keeps to the host that holds its cache.
    assert later == one


def test_no_prompt_no_key() -> None:
    assert affinity_key("completion", {}) is None


@given(
    st.lists(
        st.builds(
            Candidate,
            st.text(min_size=1, max_size=8),
            st.integers(0, 10),
            st.one_of(st.none(), st.floats(0, 500)),
            st.booleans(),
            st.booleans(),
        ),
        max_size=8,
        unique_by=lambda c: c.node_id,
    ),
    st.one_of(st.none(), st.binary(min_size=32, max_size=32)),
)
def test_order_is_a_permutation_with_healthy_hosts_first(
    hosts: list[Candidate], key: bytes | None
) -> None:
    ordered = order_hosts(hosts, key)
    assert sorted(ids(ordered)) == sorted(ids(hosts))
    flags = [c.penalized for c in ordered]
    assert flags == sorted(flags)
