"""Which host answers a request: pure functions of the candidates, no I/O, no clock.

The rule (``order_hosts``):

1. Fewest requests in flight first (as counted by the node doing the routing),
   then lowest round-trip time; this node itself counts as RTT 0.
2. Prompt-prefix affinity: requests whose prompts start the same (the same
   first 512 characters of the conversation or completion prompt) go to the
   same host, chosen by rendezvous hashing, so llama.cpp can reuse that host's
   KV cache for the shared prefix. Affinity yields when its
   host has more than ``AFFINITY_SLACK`` requests in flight above the least
   busy one: a warm cache is worth a short wait, not a long queue.

3. Hosts that failed recently (``penalized``) go last, whatever else holds:
   they are tried only when every other host failed too.

The rest of the list is the fallback order, tried when a host fails before its
first response byte.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

AFFINITY_SLACK = 1
_PREFIX_CHARS = 512


@dataclass(frozen=True)
class Candidate:
    """One host that serves the model, as the router sees it."""

    node_id: str
    inflight: int
    rtt_ms: float | None
    local: bool = False
    penalized: bool = False

    @property
    def distance(self) -> float:
        if self.local:
            return 0.0
        # Unknown RTT sorts after every measured one, but stays eligible.
        return self.rtt_ms if self.rtt_ms is not None else float("inf")


def affinity_key(endpoint: str, params: Mapping[str, Any]) -> bytes | None:
    """What decides which host's cache a request would reuse: how its prompt starts.

    For chat, the first 512 characters of the conversation up to its first user
    turn: a long shared system prompt fills them alone, so every request with it
    goes to the same host; with a short one the first user turn joins in, so
    each conversation keeps to one host turn after turn. For completions, the
    first 512 characters of the prompt.
    """
    if endpoint == "chat":
        parts = []
        for message in params.get("messages") or []:
            parts.append(f"{message.get('role')}\x1f{message.get('content') or ''}\x1e")
            if message.get("role") == "user":
                break
        text = "".join(parts)[:_PREFIX_CHARS]
    else:
        prompt = params.get("prompt")
        if isinstance(prompt, str):
            text = prompt[:_PREFIX_CHARS]
        elif isinstance(prompt, list):
            text = json.dumps(prompt[:128])
        else:
            return None
    return hashlib.sha256(text.encode()).digest() if text else None


def _rendezvous(key: bytes, node_id: str) -> bytes:
    return hashlib.sha256(key + node_id.encode()).digest()


def order_hosts(candidates: Sequence[Candidate], key: bytes | None) -> list[Candidate]:
    """Candidates in the order to try them (see the module docstring for the rule)."""
    ranked = sorted(candidates, key=lambda c: (c.penalized, c.inflight, c.distance, c.node_id))
    healthy = [c for c in ranked if not c.penalized]
    if key is None or len(healthy) < 2:
        return ranked
    preferred = max(healthy, key=lambda c: _rendezvous(key, c.node_id))
    if preferred.inflight > healthy[0].inflight + AFFINITY_SLACK:
        return ranked
    return [preferred, *(c for c in ranked if c is not preferred)]
