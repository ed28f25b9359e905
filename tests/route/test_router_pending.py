"""A request for a model nobody serves yet: 503 with Retry-After if it is known, else 404."""

from __future__ import annotations

import httpx
import pytest

from meshp2p.api import ApiError
from meshp2p.route import RequestRouter


def router(pending: dict[str, list[str]], seen: list[str]) -> RequestRouter:
    def lookup(model: str) -> tuple[str, list[str]] | None:
        name = next((n for n in pending if n.lower() == model.lower()), None)
        return None if name is None else (name, pending[name])

    return RequestRouter(
        "me",
        lambda: [],
        lambda: [],
        lambda _node: None,  # type: ignore[arg-type,return-value]
        httpx.AsyncClient(),
        pending=lookup,
        on_request=seen.append,
    )


def test_a_known_model_being_loaded_names_its_node() -> None:
    seen: list[str] = []
    with pytest.raises(ApiError) as info:
        router({"Model-A": ["12D3KooWloader"]}, seen).plan("model-a", None)
    error = info.value
    assert (error.status, error.code, error.headers["retry-after"]) == (503, "model_loading", "10")
    assert "12D3KooWloader" in error.message
    assert seen == ["Model-A"]  # demand counted under the canonical name


def test_a_known_model_nobody_took_on_yet_is_503() -> None:
    with pytest.raises(ApiError) as info:
        router({"m": []}, []).plan("m", None)
    assert (info.value.status, info.value.headers["retry-after"]) == (503, "30")
    assert "no host yet" in info.value.message


def test_an_unknown_model_stays_404_and_is_not_counted() -> None:
    seen: list[str] = []
    with pytest.raises(ApiError) as info:
        router({}, seen).plan("nope", None)
    assert info.value.status == 404
    assert seen == []
