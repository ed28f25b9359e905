"""API keys: which requests carry one of a node's keys."""

from __future__ import annotations

import pytest

from meshp2p.api._keys import ApiKeys, check_key


def test_without_keys_every_request_is_allowed() -> None:
    keys = ApiKeys()
    assert not keys.required
    assert keys.allows([])


@pytest.mark.parametrize(
    "headers",
    [
        [(b"authorization", b"Bearer K2")],
        [(b"authorization", b"bearer  K1 ")],
        [(b"x-api-key", b"K1")],
        [(b"x-api-key", b"wrong"), (b"authorization", b"Bearer K1")],
    ],
)
def test_a_request_with_a_key_is_allowed(headers: list[tuple[bytes, bytes]]) -> None:
    assert ApiKeys(["K1", "K2"]).allows(headers)


@pytest.mark.parametrize(
    "headers",
    [
        [],
        [(b"authorization", b"Bearer K")],
        [(b"authorization", b"Basic K1")],
        [(b"authorization", b"K1")],
        [(b"x-api-key", b"K12")],
        [(b"x-api-key", b"")],
    ],
)
def test_a_request_without_a_right_key_is_refused(headers: list[tuple[bytes, bytes]]) -> None:
    assert not ApiKeys(["K1", "K2"]).allows(headers)


@pytest.mark.parametrize("key", ["", "a b", "tab\there", "é"])
def test_keys_that_cannot_travel_in_a_header_are_refused(key: str) -> None:
    with pytest.raises(ValueError):
        check_key(key)
