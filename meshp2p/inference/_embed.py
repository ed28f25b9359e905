"""Embeddings in an inference worker: a second llama.cpp context on the model's GGUF,
made with ``embedding=True`` on first use, so generation's context and cache are never
touched by an embedding request.

Pooling is the model's own when its GGUF names one (``<arch>.pooling_type``: mean, CLS
or last token, as embedding models declare), else mean over the input's tokens.
Vectors are normalised to length 1, as OpenAI's are.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ..api._openai import ApiError

#: Tokens one request may embed in all (OpenAI's limit): bounds its time and its answer.
MAX_REQUEST_TOKENS = 300_000

# llama.cpp's enum llama_pooling_type.
POOLING_UNSPECIFIED = -1
POOLING_NONE = 0
POOLING_MEAN = 1


def pooling_for(metadata: Mapping[str, str]) -> int:
    """The pooling to ask llama.cpp for: the GGUF's own (llama.cpp reads it when told
    "unspecified") if it names one that pools, else mean."""
    arch = metadata.get("general.architecture", "")
    try:
        declared = int(metadata.get(f"{arch}.pooling_type", POOLING_NONE))
    except ValueError:
        declared = POOLING_NONE
    return POOLING_UNSPECIFIED if declared > POOLING_NONE else POOLING_MEAN


def load_embedder(
    path: str, *, threads: int, ctx_size: int, pooling: int
) -> Any:  # pragma: no cover - exercised through Embedder
    from llama_cpp import Llama

    return Llama(
        model_path=path,
        embedding=True,
        pooling_type=pooling,
        n_ctx=ctx_size,
        # A pooled input must fit one batch.
        n_batch=ctx_size,
        n_ubatch=ctx_size,
        n_threads=threads,
        n_threads_batch=threads,
        verbose=False,
    )


class Embedder:
    """Embeds inputs with a context made by ``load`` on first use; one thread at a time."""

    def __init__(self, load: Callable[[], Any], n_embd: int) -> None:
        self._load = load
        self._llama: Any | None = None
        self._lock = threading.Lock()
        self.n_embd = n_embd

    @property
    def loaded(self) -> bool:
        return self._llama is not None

    def _context(self) -> Any:
        if self._llama is None:
            try:
                self._llama = self._load()
            except Exception as exc:
                raise ApiError(
                    500, f"the embedding context could not be made: {exc}", type="server_error"
                ) from None
        return self._llama

    def tokens(self, llama: Any, inputs: Sequence[str | list[int]]) -> list[list[int]]:
        limit = min(llama.n_ctx(), llama.n_batch)
        vocab = llama.n_vocab()
        out = []
        for i, item in enumerate(inputs):
            if isinstance(item, str):
                tokens = llama.tokenize(item.encode(), add_bos=True, special=False)
            else:
                if any(t >= vocab for t in item):
                    raise ApiError(
                        400, f"'input[{i}]' holds a token id outside 0..{vocab - 1}", param="input"
                    )
                tokens = list(item)
            if not tokens:
                raise ApiError(400, f"'input[{i}]' is empty", param="input")
            if len(tokens) > limit:
                raise ApiError(
                    400,
                    f"'input[{i}]' has {len(tokens)} tokens; this model embeds at most {limit}",
                    param="input",
                    code="context_length_exceeded",
                )
            out.append(tokens)
        total = sum(len(t) for t in out)
        if total > MAX_REQUEST_TOKENS:
            raise ApiError(
                400,
                f"the inputs hold {total} tokens; one request embeds at most "
                f"{MAX_REQUEST_TOKENS}: split them over several requests",
                param="input",
            )
        return out

    def embed(
        self, inputs: Sequence[str | list[int]], cancel: threading.Event
    ) -> tuple[list[list[float]], int]:
        """A unit vector per input and the tokens read; ``Cancelled`` checks between inputs."""
        import llama_cpp

        from ._engine import Cancelled

        with self._lock:
            llama = self._context()
            batches = self.tokens(llama, inputs)
            vectors: list[list[float]] = []
            for tokens in batches:
                if cancel.is_set():
                    raise Cancelled()
                llama._batch.reset()
                llama._batch.add_sequence(tokens, 0, True)
                llama._ctx.kv_cache_clear()
                llama._ctx.decode(llama._batch)
                pointer = llama_cpp.llama_get_embeddings_seq(llama._ctx.ctx, 0)
                vectors.append(_unit(pointer[: self.n_embd]))
            llama._batch.reset()
            llama._ctx.kv_cache_clear()
            return vectors, sum(len(t) for t in batches)


def _unit(vector: Sequence[float]) -> list[float]:
    norm = math.sqrt(sum(x * x for x in vector))
    return [x / norm for x in vector] if norm > 0 else list(vector)
