"""Embeddings in a llama.cpp context of their own, on the real default model."""

from __future__ import annotations

import math
import threading
from pathlib import Path
from typing import Any

import llama_cpp
import pytest

from meshp2p.api._openai import ApiError
from meshp2p.inference._embed import (
    POOLING_MEAN,
    POOLING_UNSPECIFIED,
    Embedder,
    load_embedder,
    pooling_for,
)
from meshp2p.inference._engine import Engine, Finish
from meshp2p.inference._models import ModelStore


@pytest.fixture(scope="module")
def gemma_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ModelStore(tmp_path_factory.mktemp("home")).ensure_default().path


@pytest.fixture(scope="module")
def generation(gemma_path: Path) -> Any:
    return llama_cpp.Llama(model_path=str(gemma_path), n_ctx=512, n_threads=1, verbose=False)


@pytest.fixture(scope="module")
def embedder(gemma_path: Path, generation: Any) -> Embedder:
    pooling = pooling_for(generation.metadata)
    return Embedder(
        lambda: load_embedder(str(gemma_path), threads=1, ctx_size=256, pooling=pooling),
        generation.n_embd(),
    )


def test_pooling_is_the_models_own_else_mean() -> None:
    assert pooling_for({"general.architecture": "gemma3"}) == POOLING_MEAN
    assert pooling_for({"general.architecture": "bert", "bert.pooling_type": "2"}) == (
        POOLING_UNSPECIFIED
    )
    assert pooling_for({"general.architecture": "x", "x.pooling_type": "0"}) == POOLING_MEAN


def test_vectors_are_unit_length_equal_sized_and_repeatable(embedder: Embedder) -> None:
    vectors, tokens = embedder.embed(
        ["hello world", "the cat sat", [2, 100, 200]], threading.Event()
    )
    assert [len(v) for v in vectors] == [embedder.n_embd] * 3 == [640] * 3
    assert all(math.isclose(sum(x * x for x in v), 1.0, rel_tol=1e-6) for v in vectors)
    assert tokens > 3
    again, _ = embedder.embed(["hello world"], threading.Event())
    assert again[0] == vectors[0]
    assert vectors[0] != vectors[1]


def test_embedding_leaves_generation_as_it_was(embedder: Embedder, generation: Any) -> None:
    engine = Engine(generation)

    def answer() -> str:
        params = {"prompt": "The capital of France is", "max_tokens": 8, "temperature": 0}
        prepared = engine.prepare("completion", params)
        *_, finish = engine.generate(prepared, threading.Event())
        assert isinstance(finish, Finish)
        return finish.text

    before = answer()
    embedder.embed(["an unrelated text to embed"], threading.Event())
    assert answer() == before


@pytest.mark.parametrize(
    ("inputs", "code"),
    [(["word " * 400], "context_length_exceeded"), ([[10**7]], None)],
)
def test_inputs_it_cannot_embed_are_400(
    embedder: Embedder, inputs: list[Any], code: str | None
) -> None:
    with pytest.raises(ApiError) as info:
        embedder.embed(inputs, threading.Event())
    assert (info.value.status, info.value.param, info.value.code) == (400, "input", code)


def test_a_request_over_the_token_limit_is_400(embedder: Embedder) -> None:
    from meshp2p.inference import _embed

    with pytest.raises(ApiError) as info:
        embedder.tokens(embedder._context(), [[5] * 200] * (_embed.MAX_REQUEST_TOKENS // 200 + 1))
    assert info.value.param == "input" and "at most 300000" in info.value.message
