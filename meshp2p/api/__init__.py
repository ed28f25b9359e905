"""The HTTP APIs: the OpenAI-compatible gateway and the management console.

- ``parse_request``: an OpenAI request body validated into an ``InferenceRequest``
  (or an ``ApiError`` with OpenAI's error shape); pure, so every node that
  receives a request checks it the same way.
- ``Gateway``: the ASGI app of ``/v1/*``, routing by model through a
  ``meshp2p.route.RequestRouter``; ``Console``: ``/api/status`` and friends.
"""

from ._console import Console
from ._gateway import DEFAULT_MAX_BODY, Gateway
from ._openai import ApiError, Endpoint, InferenceRequest, error_body, parse_request

__all__ = [
    "DEFAULT_MAX_BODY",
    "ApiError",
    "Console",
    "Endpoint",
    "Gateway",
    "InferenceRequest",
    "error_body",
    "parse_request",
]
