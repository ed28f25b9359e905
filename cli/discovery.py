"""Discovery on the command line: ``meshp2p discover`` and the node's discovery flags."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import trio

from meshp2p import format_size
from meshp2p.discovery import (
    DEFAULT_RELAYS,
    MeshListing,
    Preferences,
    RelayPool,
    find_listings,
    score,
)
from meshp2p.mesh._invite import load_credentials


def add_relay_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--nostr-relay",
        action="append",
        default=[],
        metavar="URL",
        help="a Nostr relay (ws:// or wss://; repeatable; default: "
        + ", ".join(DEFAULT_RELAYS)
        + ", contacted only for --publish, --auto and discover)",
    )


def add_node_options(node: argparse.ArgumentParser) -> None:
    """The node's discovery flags."""
    add_relay_option(node)
    node.add_argument(
        "--publish",
        action="store_true",
        help="list this mesh on Nostr, invite token included: anyone can then join",
    )
    node.add_argument(
        "--auto",
        action="store_true",
        help="join the best mesh listed on Nostr (health-checked first), else start one",
    )
    node.add_argument(
        "--mesh-name", metavar="NAME", help="with --publish or --auto: the mesh's name"
    )
    node.add_argument("--region", metavar="REGION", help="with --publish or --auto: e.g. eu-west")
    node.add_argument(
        "--max-clients",
        type=int,
        metavar="N",
        help="with --publish: passive clients listed as welcome",
    )
    node.add_argument(
        "--publish-interval",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="seconds between listing republications (default 60; a listing lives two)",
    )
    node.add_argument(
        "--no-rendezvous",
        dest="rendezvous",
        action="store_false",
        help="do not publish this node's encrypted whereabouts for its mesh on the relays",
    )
    node.add_argument(
        "--lan",
        action="store_true",
        help="find members on the same LAN by mDNS (off by default: it announces this node)",
    )


def node_config(args: argparse.Namespace) -> dict[str, Any]:
    """NodeConfig's discovery fields from the parsed flags."""
    return {
        "nostr_relays": tuple(args.nostr_relay),
        "publish": args.publish,
        "auto": args.auto,
        "mesh_name": args.mesh_name,
        "region": args.region,
        "max_clients": args.max_clients,
        "publish_interval": args.publish_interval,
        "rendezvous": args.rendezvous,
        "lan": args.lan,
    }


def add_discover_command(sub: Any, common: argparse.ArgumentParser) -> None:
    discover = sub.add_parser(
        "discover", parents=[common], help="list the public meshes listed on Nostr"
    )
    add_relay_option(discover)
    discover.add_argument("--json", action="store_true", help="print JSON, one object per mesh")
    discover.add_argument("--mesh-name", metavar="NAME", help="only meshes of this name")
    discover.add_argument("--model", metavar="MODEL", help="only meshes serving or holding MODEL")


def run_discover(args: argparse.Namespace, home: Path) -> None:
    pool = RelayPool(tuple(args.nostr_relay) or DEFAULT_RELAYS)
    listings = trio.run(lambda: find_listings(pool, mesh_name=args.mesh_name, model=args.model))
    last = load_credentials(home) if (home / "mesh.json").exists() else None
    wants = Preferences(
        mesh_name=args.mesh_name,
        last_mesh=last.mesh_id if last else None,
        models=(args.model,) if args.model else (),
    )
    now = time.time()
    rows = [_row(item, score(item, wants), now) for item in listings]
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    answered = sum(1 for r in pool.status() if r["healthy"])
    print(f"{len(rows)} meshes from {answered} of {len(pool.relays)} relays")
    for r in rows:
        models = ", ".join(r["models_served"]) or "-"
        print(
            f"  {r['name'] or '(unnamed)':24} {r['region'] or '-':10} {r['nodes']:>3} nodes "
            f"{format_size(r['memory_total']):>9}  {r['age_s']:>5.0f} s old  "
            f"score {r['score'] if r['score'] is not None else 'full'}  {models}"
        )


def _row(listing: MeshListing, points: float | None, now: float) -> dict[str, Any]:
    return {
        **listing.content(),
        "score": points,
        "created_at": listing.created_at,
        "expires_at": listing.expires_at,
        "age_s": round(now - listing.created_at, 1),
    }
