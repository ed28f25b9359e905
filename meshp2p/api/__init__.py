"""The HTTP APIs: the OpenAI-compatible gateway and the management console.

- ``parse_request``: an OpenAI request body validated into an ``InferenceRequest``
  (or an ``ApiError`` with OpenAI's error shape); pure, so every node that
  receives a request checks it the same way.
- ``Gateway``: the ASGI app of ``/v1/*`` (OpenAI chat, completions, Responses and
  embeddings; Anthropic Messages), routing by model through a
  ``meshp2p.route.RequestRouter``, behind ``ApiKeys`` when it has keys, keeping answered
  Responses in a ``ResponseStore`` for ``previous_response_id``; ``Console``:
  ``/api/status`` and friends.
"""

from ._anthropic import anthropic_error_body
from ._console import Console
from ._gateway import DEFAULT_MAX_BODY, Gateway
from ._keys import ApiKeys
from ._openai import ApiError, Endpoint, ErrorStyle, InferenceRequest, error_body, parse_request
from ._response_store import ResponseStore

__all__ = [
    "DEFAULT_MAX_BODY",
    "ApiError",
    "ApiKeys",
    "Console",
    "Endpoint",
    "ErrorStyle",
    "Gateway",
    "InferenceRequest",
    "ResponseStore",
    "anthropic_error_body",
    "error_body",
    "parse_request",
]
