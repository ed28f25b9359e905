"""The embeddings API core: input forms, limits, and the answer's float and base64 shapes."""

from __future__ import annotations

import base64
import json
import struct
from typing import Any

import pytest

from meshp2p.api import ApiError, parse_request
from meshp2p.api._embeddings import MAX_INPUTS, embeddings_body


def parse(**fields: Any) -> Any:
    return parse_request("embeddings", json.dumps({"model": "m", **fields}).encode())


@pytest.mark.parametrize(
    ("value", "inputs"),
    [
        ("a", ["a"]),
        (["a", "b"], ["a", "b"]),
        ([1, 2, 3], [[1, 2, 3]]),
        ([[1, 2], [3]], [[1, 2], [3]]),
        (["a", [4]], ["a", [4]]),
    ],
)
def test_every_input_form_is_a_list_of_inputs(value: Any, inputs: list[Any]) -> None:
    request = parse(input=value, user="u")
    assert request.params == {"input": inputs, "encoding_format": "float"}
    assert (request.endpoint, request.stream, request.ignored) == ("embeddings", False, ())


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({}, "input"),
        ({"input": ""}, "input"),
        ({"input": []}, "input"),
        ({"input": ["a", ""]}, "input"),
        ({"input": [[-1]]}, "input"),
        ({"input": [True]}, "input"),
        ({"input": ["a"] * (MAX_INPUTS + 1)}, "input"),
        ({"input": "a", "encoding_format": "int8"}, "encoding_format"),
        ({"input": "a", "dimensions": 0}, "dimensions"),
        ({"input": "a", "stream": True}, "stream"),
    ],
)
def test_bad_fields_get_400_naming_them(fields: dict[str, Any], param: str) -> None:
    with pytest.raises(ApiError) as info:
        parse(**fields)
    assert (info.value.status, info.value.param) == (400, param)


def test_base64_is_little_endian_float32() -> None:
    body = embeddings_body("m", [[0.5, -1.0], [0.25, 2.0]], 7, "base64")
    raw = base64.b64decode(body["data"][1]["embedding"])
    assert struct.unpack("<2f", raw) == (0.25, 2.0)
    assert body["usage"] == {"prompt_tokens": 7, "total_tokens": 7}
    floats = embeddings_body("m", [[0.5, -1.0]], 2, "float")
    assert floats["data"] == [{"object": "embedding", "index": 0, "embedding": [0.5, -1.0]}]
