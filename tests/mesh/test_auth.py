"""/mesh/auth/1.0.0: mutual proof of the mesh secret, bound to peer ids and fresh nonces."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshp2p._errors import ProtocolError
from meshp2p.mesh._auth import (
    INITIATOR_LABEL,
    RESPONDER_LABEL,
    AuthInitiator,
    AuthResponder,
    AuthResult,
    AuthState,
    Challenge,
    Hello,
    Proof,
    SeenNonces,
    compute_mac,
    parse_auth_message,
    transcript,
)

SECRET = bytes(range(32))
OTHER_SECRET = bytes(range(1, 33))
PEER_I = b"\x00\x24initiator-peer-id"
PEER_R = b"\x00\x24responder-peer-id"
NONCE_I = b"\x11" * 32
NONCE_R = b"\x22" * 32


def pair(
    *,
    secret_i: bytes = SECRET,
    secret_r: bytes = SECRET,
    mesh_i: str = "mesh",
    mesh_r: str = "mesh",
    nonce_i: bytes = NONCE_I,
    nonce_r: bytes = NONCE_R,
    seen: SeenNonces | None = None,
) -> tuple[AuthInitiator, AuthResponder]:
    initiator = AuthInitiator(
        secret=secret_i,
        mesh_id=mesh_i,
        local_peer_id=PEER_I,
        remote_peer_id=PEER_R,
        nonce=nonce_i,
    )
    responder = AuthResponder(
        secret=secret_r,
        mesh_id=mesh_r,
        local_peer_id=PEER_R,
        remote_peer_id=PEER_I,
        nonce=nonce_r,
        seen_nonces=seen,
    )
    return initiator, responder


def run(initiator: AuthInitiator, responder: AuthResponder) -> None:
    """Relay messages between the two until neither has anything more to say."""
    to_responder: Any = initiator.start().to_map()
    while to_responder is not None:
        to_initiator = responder.receive(to_responder)
        if to_initiator is None:
            return
        reply = initiator.receive(to_initiator.to_map())
        to_responder = None if reply is None else reply.to_map()


def test_handshake_with_the_same_secret_verifies_both_peers() -> None:
    initiator, responder = pair()
    run(initiator, responder)
    assert initiator.state is responder.state is AuthState.DONE
    assert initiator.peer_verified and responder.peer_verified
    assert initiator.reason is None and responder.reason is None


def test_initiator_refuses_a_responder_without_the_secret_and_sends_no_proof() -> None:
    initiator, responder = pair(secret_r=OTHER_SECRET)
    challenge = responder.receive(initiator.start())
    assert isinstance(challenge, Challenge)
    assert initiator.receive(challenge) is None
    assert initiator.state is AuthState.FAILED
    assert not initiator.peer_verified
    assert initiator.reason is not None and "bad MAC" in initiator.reason


def test_responder_refuses_a_proof_made_without_the_secret() -> None:
    initiator, responder = pair()
    responder.receive(initiator.start())
    forged = compute_mac(
        OTHER_SECRET, transcript(INITIATOR_LABEL, "mesh", PEER_I, PEER_R, NONCE_I, NONCE_R)
    )
    assert responder.receive(Proof(forged)) == AuthResult(ok=False, reason="mac")
    assert responder.state is AuthState.FAILED and not responder.peer_verified


def test_responder_mac_is_bound_to_both_peer_ids() -> None:
    # A responder that saw the stream come from a different peer (a relay in the middle)
    # computes a MAC the real initiator cannot accept.
    initiator, _ = pair()
    relayed = AuthResponder(
        secret=SECRET,
        mesh_id="mesh",
        local_peer_id=PEER_R,
        remote_peer_id=b"\x00\x24man-in-the-middle",
        nonce=NONCE_R,
    )
    challenge = relayed.receive(initiator.start())
    assert challenge is not None
    initiator.receive(challenge)
    assert initiator.state is AuthState.FAILED


def test_the_two_directions_use_distinct_labels() -> None:
    # Echoing the responder's MAC back as the proof must not work.
    initiator, responder = pair()
    challenge = responder.receive(initiator.start())
    assert isinstance(challenge, Challenge)
    assert responder.receive(Proof(challenge.mac)) == AuthResult(ok=False, reason="mac")
    assert RESPONDER_LABEL != INITIATOR_LABEL


def test_responder_refuses_another_mesh_id_and_says_so() -> None:
    initiator, responder = pair(mesh_i="other-mesh")
    assert responder.receive(initiator.start()) == AuthResult(ok=False, reason="mesh_id")
    assert responder.reason is not None and "other-mesh" in responder.reason


def test_initiator_fails_with_the_responders_reason_when_refused() -> None:
    initiator, responder = pair(mesh_i="other-mesh")
    run(initiator, responder)
    assert initiator.state is AuthState.FAILED
    assert initiator.reason == "responder refused: mesh_id"


def test_responder_refuses_an_unknown_auth_version() -> None:
    _, responder = pair()
    assert responder.receive(Hello("mesh", NONCE_I, v=2)) == AuthResult(False, "version")


def test_responder_refuses_a_short_nonce_as_malformed() -> None:
    _, responder = pair()
    reply = responder.receive({"t": "hello", "v": 1, "mesh_id": "mesh", "nonce": b"\x11" * 31})
    assert reply == AuthResult(ok=False, reason="malformed")
    assert responder.state is AuthState.FAILED


def test_responder_refuses_its_own_nonce_reflected_back() -> None:
    _, responder = pair()
    assert responder.receive(Hello("mesh", NONCE_R)) == AuthResult(False, "nonce")


def test_initiator_refuses_its_own_nonce_reflected_back() -> None:
    initiator, _ = pair()
    initiator.start()
    initiator.receive(Challenge(NONCE_I, b"\x00" * 32))
    assert initiator.state is AuthState.FAILED and "nonce" in (initiator.reason or "")


def test_a_replayed_hello_nonce_is_refused_by_a_node_that_remembers_nonces() -> None:
    seen = SeenNonces()
    first_i, first_r = pair(seen=seen)
    run(first_i, first_r)
    assert first_r.peer_verified
    _, second_r = pair(seen=seen, nonce_r=b"\x33" * 32)
    assert second_r.receive(Hello("mesh", NONCE_I)) == AuthResult(False, "nonce")


def test_seen_nonces_forgets_the_oldest_beyond_its_capacity() -> None:
    seen = SeenNonces(capacity=2)
    assert seen.add(b"a") and seen.add(b"b") and seen.add(b"c")
    assert len(seen) == 2 and b"a" not in seen and not seen.add(b"c")


def test_responder_refuses_a_proof_before_a_hello() -> None:
    _, responder = pair()
    assert responder.receive(Proof(b"\x00" * 32)) == AuthResult(ok=False, reason="order")


def test_initiator_fails_on_a_result_before_the_challenge() -> None:
    initiator, _ = pair()
    initiator.start()
    assert initiator.receive(AuthResult(ok=True)) is None
    assert initiator.state is AuthState.FAILED


def test_initiator_fails_on_a_message_before_start() -> None:
    initiator, _ = pair()
    initiator.receive(Challenge(NONCE_R, b"\x00" * 32))
    assert initiator.state is AuthState.FAILED


def test_a_message_after_the_handshake_fails_it_closed() -> None:
    initiator, responder = pair()
    run(initiator, responder)
    assert responder.receive(Hello("mesh", b"\x44" * 32)) is None
    assert initiator.receive(AuthResult(ok=True)) is None
    assert not responder.peer_verified and not initiator.peer_verified


def test_a_failed_handshake_ignores_everything_after() -> None:
    initiator, responder = pair(mesh_i="other")
    run(initiator, responder)
    assert responder.receive(Proof(b"\x00" * 32)) is None
    assert responder.state is AuthState.FAILED


def test_unknown_keys_are_ignored() -> None:
    _, responder = pair()
    reply = responder.receive(
        {"t": "hello", "v": 1, "mesh_id": "mesh", "nonce": NONCE_I, "later": {"x": 1}}
    )
    assert isinstance(reply, Challenge)


def test_unknown_message_type_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError, match="unknown auth message type"):
        parse_auth_message({"t": "hullo"})


def test_starting_twice_is_a_programming_error() -> None:
    initiator, _ = pair()
    initiator.start()
    with pytest.raises(RuntimeError):
        initiator.start()


def test_nonce_may_come_from_a_callable() -> None:
    initiator = AuthInitiator(
        secret=SECRET,
        mesh_id="m",
        local_peer_id=PEER_I,
        remote_peer_id=PEER_R,
        nonce=lambda: NONCE_I,
    )
    assert initiator.start().nonce == NONCE_I


@pytest.mark.parametrize(
    "kwargs",
    [{"secret": b"short"}, {"nonce": b"short"}, {"mesh_id": ""}],
)
def test_bad_local_parameters_are_refused_at_construction(kwargs: dict[str, Any]) -> None:
    args: dict[str, Any] = {
        "secret": SECRET,
        "mesh_id": "m",
        "local_peer_id": PEER_I,
        "remote_peer_id": PEER_R,
        "nonce": NONCE_I,
    }
    with pytest.raises(ValueError):
        AuthResponder(**{**args, **kwargs})


def test_transcript_parts_are_length_prefixed_so_boundaries_cannot_shift() -> None:
    a = transcript(RESPONDER_LABEL, "ab", b"c", b"d", NONCE_I, NONCE_R)
    b = transcript(RESPONDER_LABEL, "a", b"bc", b"d", NONCE_I, NONCE_R)
    assert a != b


# Hypothesis.

secrets = st.binary(min_size=32, max_size=32)
nonces = st.binary(min_size=32, max_size=32)


@settings(max_examples=50, deadline=None)
@given(secrets, nonces, nonces)
def test_handshake_succeeds_for_any_shared_secret_and_distinct_nonces(
    secret: bytes, nonce_i: bytes, nonce_r: bytes
) -> None:
    initiator, responder = pair(secret_i=secret, secret_r=secret, nonce_i=nonce_i, nonce_r=nonce_r)
    run(initiator, responder)
    if nonce_i == nonce_r:
        assert not initiator.peer_verified and not responder.peer_verified
    else:
        assert initiator.peer_verified and responder.peer_verified


@settings(max_examples=50, deadline=None)
@given(secrets, secrets, nonces, nonces)
def test_handshake_fails_on_both_sides_for_any_differing_secret(
    secret_i: bytes, secret_r: bytes, nonce_i: bytes, nonce_r: bytes
) -> None:
    if secret_i == secret_r:
        secret_r = bytes([secret_r[0] ^ 1]) + secret_r[1:]
    initiator, responder = pair(
        secret_i=secret_i, secret_r=secret_r, nonce_i=nonce_i, nonce_r=nonce_r
    )
    run(initiator, responder)
    assert not initiator.peer_verified and not responder.peer_verified


field_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**64), max_value=2**64 - 1),
    st.text(max_size=10),
    st.binary(max_size=40),
    st.just(NONCE_I),
    st.just(NONCE_R),
    st.lists(st.integers(), max_size=3),
)
auth_maps = st.fixed_dictionaries(
    {"t": st.sampled_from(["hello", "challenge", "proof", "result", "other", 7])},
    optional={
        "v": st.one_of(st.just(1), field_values),
        "mesh_id": st.one_of(st.just("mesh"), field_values),
        "nonce": st.one_of(nonces, field_values),
        "mac": st.one_of(st.binary(min_size=32, max_size=32), field_values),
        "ok": field_values,
        "reason": field_values,
    },
)


@settings(max_examples=150, deadline=None)
@given(st.lists(auth_maps, max_size=5), st.booleans())
def test_random_messages_never_raise_and_never_verify_a_peer(
    msgs: list[dict[str, Any]], start: bool
) -> None:
    initiator, responder = pair()
    if start:
        initiator.start()
    for msg in msgs:
        for side in (initiator, responder):
            reply = side.receive(msg)
            assert reply is None or isinstance(reply, Hello | Challenge | Proof | AuthResult)
            if side.state is AuthState.FAILED:
                assert side.reason
    # Without the secret no sequence of messages can produce a valid MAC.
    assert not initiator.peer_verified and not responder.peer_verified
