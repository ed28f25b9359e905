"""OpenAI's embeddings API (``POST /v1/embeddings``): request validation and the answer's
shape; no I/O. The worker embeds with a llama.cpp context of its own
(``inference/_embed.py``), so generation's cache is never disturbed."""

from __future__ import annotations

import base64
import struct
from collections.abc import Sequence
from typing import Any

from ._openai import InferenceRequest, _bad, _model, _unsupported

MAX_INPUTS = 2048
"""Inputs per request, as OpenAI allows."""

_NO_EFFECT = frozenset({"user"})

EmbeddingInput = str | list[int]


def parse_embeddings(endpoint: str, body: dict[str, Any], raw: bytes) -> InferenceRequest:
    """Validate an embeddings body (already a JSON object) into an ``InferenceRequest``."""
    model = _model(body)
    params: dict[str, Any] = {"input": _inputs(body.get("input"))}
    fmt = body.get("encoding_format", "float")
    if fmt not in ("float", "base64"):
        raise _bad("'encoding_format' must be float or base64", "encoding_format")
    params["encoding_format"] = fmt
    dimensions = body.get("dimensions")
    if dimensions is not None:
        if isinstance(dimensions, bool) or not isinstance(dimensions, int) or dimensions < 1:
            raise _bad("'dimensions' must be a positive integer", "dimensions", "invalid_type")
        params["dimensions"] = dimensions
    if body.get("stream"):
        raise _unsupported("stream", "embeddings are answered whole")
    handled = {"model", "input", "encoding_format", "dimensions", "stream"}
    ignored = tuple(sorted(k for k in body if k not in handled and k not in _NO_EFFECT))
    return InferenceRequest("embeddings", model, False, False, params, ignored, raw)


def _is_tokens(value: Any) -> bool:
    return (
        isinstance(value, list)
        and bool(value)
        and all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in value)
    )


def _inputs(value: Any) -> list[EmbeddingInput]:
    """``input``: a string, a list of strings, a token array, or a list of token arrays."""
    message = (
        "'input' must be a non-empty string, a list of them, a token array "
        f"or a list of token arrays (at most {MAX_INPUTS})"
    )
    if isinstance(value, str):
        if not value:
            raise _bad("'input' must not be an empty string", "input")
        return [value]
    if _is_tokens(value):
        return [list(value)]
    if not isinstance(value, list) or not value or len(value) > MAX_INPUTS:
        raise _bad(message, "input", "invalid_type")
    out: list[EmbeddingInput] = []
    for i, item in enumerate(value):
        if isinstance(item, str) and item:
            out.append(item)
        elif _is_tokens(item):
            out.append(list(item))
        else:
            raise _bad(f"'input[{i}]' must be a non-empty string or token array", "input")
    return out


def embeddings_body(
    model: str, vectors: Sequence[Sequence[float]], tokens: int, encoding_format: str
) -> dict[str, Any]:
    """OpenAI's embeddings answer; base64 is the little-endian float32 bytes of a vector."""
    data = []
    for i, vector in enumerate(vectors):
        embedding: Any = list(vector)
        if encoding_format == "base64":
            packed = struct.pack(f"<{len(vector)}f", *vector)
            embedding = base64.b64encode(packed).decode()
        data.append({"object": "embedding", "index": i, "embedding": embedding})
    return {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }
