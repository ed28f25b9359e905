"""API keys on the command line: the node's ``--api-key`` / ``--no-api-key``, and the key
a client command sends (``--api-key``, else ``MESHP2P_API_KEY``)."""

from __future__ import annotations

import argparse
import os
from typing import Any

ENV_KEY = "MESHP2P_API_KEY"


def add_node_options(node: argparse.ArgumentParser) -> None:
    node.add_argument(
        "--api-key",
        action="append",
        default=[],
        metavar="KEY",
        help="require this key on every /v1 request, as 'Authorization: Bearer KEY' or "
        f"'x-api-key: KEY' (repeatable; default ${ENV_KEY} if set)",
    )
    node.add_argument(
        "--no-api-key",
        action="store_true",
        help="serve the API without a key on a --host other machines can reach",
    )


def env_key() -> str | None:
    """``MESHP2P_API_KEY``, if set and not blank."""
    value = os.environ.get(ENV_KEY, "").strip()
    return value or None


def node_config(args: argparse.Namespace) -> dict[str, Any]:
    """The NodeConfig fields of the key flags: the flags' keys, else the environment's."""
    keys = tuple(args.api_key)
    if not keys and not args.no_api_key and (key := env_key()) is not None:
        keys = (key,)
    return {"api_keys": keys, "no_api_key": args.no_api_key}
