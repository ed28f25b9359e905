"""The public surface: each package's ``__all__``, pinned.

A change here is a change to what apps may import: make it on purpose, and say
so in CHANGELOG.md. Everything listed must exist, be typed (py.typed), and come
from the package that documents it in docs/library.md.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

SURFACE = {
    "meshp2p": [
        "ChecksumError",
        "ConfigError",
        "DEFAULT_API_PORT",
        "DEFAULT_CONSOLE_PORT",
        "DownloadError",
        "HomeInUseError",
        "MeshError",
        "ModelError",
        "ModelNotFoundError",
        "Node",
        "NodeConfig",
        "PortInUseError",
        "ProtocolError",
        "WorkerError",
        "format_size",
        "parse_size",
    ],
    "meshp2p.transport": [
        "DEFAULT_LISTEN",
        "FrameDecoder",
        "NOISE_PROTOCOL_ID",
        "NoiseTransport",
        "QuicPathTuner",
        "YAMUX_PROTOCOL_ID",
        "Yamux",
        "addrs_by_peer",
        "close_quietly",
        "close_write",
        "decode_cbor",
        "dialable_addrs",
        "encode_cbor",
        "encode_frame",
        "honour_muxer_opt",
        "load_or_create_key",
        "mesh_host",
        "parse_listen",
        "peer_id",
        "read_message",
        "read_some",
        "reset_quietly",
        "transport_addrs",
        "transport_rank",
    ],
    "meshp2p.mesh": [
        "AUTH_PROTOCOL_ID",
        "Announce",
        "Announcement",
        "AuthInitiator",
        "AuthResponder",
        "AuthResult",
        "AuthState",
        "Challenge",
        "Dead",
        "Digest",
        "GOSSIP_PROTOCOL_ID",
        "Hello",
        "InviteError",
        "InviteToken",
        "Leaving",
        "LocalState",
        "MeshCredentials",
        "MeshKad",
        "MeshService",
        "MeshState",
        "MeshView",
        "ModelFile",
        "PeerInfo",
        "Proof",
        "Want",
        "on_disk_key",
        "served_key",
    ],
    "meshp2p.route": [
        "Candidate",
        "HostEntry",
        "HostUnavailable",
        "LocalUpstream",
        "PROTOCOL_ID",
        "ROUTE",
        "RemoteHost",
        "RemoteUpstream",
        "RequestRouter",
        "ResponseData",
        "ResponseEnd",
        "ResponseHead",
        "RouteClientExchange",
        "RouteError",
        "RouteRequest",
        "RouteServer",
        "RouteServerExchange",
        "RoutingTable",
        "RoutingTableClient",
        "TableRequest",
        "TableUnchanged",
        "Unavailable",
        "UpstreamBroken",
        "UpstreamResponse",
        "affinity_key",
        "order_hosts",
        "route_request",
        "table_from_view",
    ],
    "meshp2p.tensor": [
        "HostHello",
        "HostRewriter",
        "LayerAssignment",
        "LocalFiles",
        "PROTOCOL_ID",
        "PlacementPlan",
        "RPC_TENSOR",
        "Refused",
        "ResponseFilter",
        "RewriteCounters",
        "RpcCommand",
        "RpcRequestParser",
        "RpcTensor",
        "TensorServer",
        "TensorTunnel",
        "WorkerHello",
        "WorkerRewriter",
        "WorkerUnavailable",
        "open_tunnels",
        "plan_placement",
        "tensor_split",
    ],
    "meshp2p.discovery": [
        "DEFAULT_RELAYS",
        "DiscoveryService",
        "Event",
        "LISTING_KIND",
        "LISTING_TTL_S",
        "LanDiscovery",
        "ListingMeta",
        "MeshListing",
        "NostrKey",
        "Preferences",
        "RENDEZVOUS_KIND",
        "REPUBLISH_S",
        "RelayClient",
        "RelayError",
        "RelayPool",
        "RendezvousRecord",
        "choose_mesh",
        "current_listings",
        "current_rendezvous",
        "find_listings",
        "listing_event",
        "listing_filter",
        "load_or_create_nostr_key",
        "newest_replaceable",
        "open_rendezvous",
        "parse_event",
        "parse_listing",
        "parse_relay_message",
        "probe",
        "ranked",
        "rendezvous_event",
        "rendezvous_filter",
        "score",
        "verify",
    ],
    "meshp2p.inference": [
        "CatalogEntry",
        "DEFAULT_MODEL",
        "Delta",
        "Engine",
        "Finish",
        "GgufLayout",
        "InferenceWorker",
        "Launch",
        "ModelFile",
        "ModelStore",
        "Placement",
        "PreparedRequest",
        "ProgressBar",
        "ProgressFactory",
        "ToolCall",
        "Unplaceable",
        "WorkerSettings",
        "WorkerState",
        "default_home",
        "load_catalog",
        "parse_tool_calls",
        "read_layout",
    ],
    "meshp2p.api": [
        "ApiError",
        "Console",
        "DEFAULT_MAX_BODY",
        "Endpoint",
        "Gateway",
        "InferenceRequest",
        "error_body",
        "parse_request",
    ],
    "meshp2p.node": [
        "DEFAULT_API_PORT",
        "DEFAULT_CONSOLE_PORT",
        "DEFAULT_MAX_TOKENS",
        "HomeInUseError",
        "Node",
        "NodeConfig",
        "default_threads",
    ],
}

LIBRARY = (Path(__file__).resolve().parents[1] / "docs/library.md").read_text()


@pytest.mark.parametrize("package", sorted(SURFACE))
def test_public_names_are_the_pinned_ones(package: str) -> None:
    module = importlib.import_module(package)
    assert sorted(module.__all__) == SURFACE[package]
    for name in module.__all__:
        assert hasattr(module, name), f"{package}.{name} is listed but missing"


@pytest.mark.parametrize("package", sorted(set(SURFACE) - {"meshp2p"}))
def test_every_public_package_has_a_section_in_the_library_docs(package: str) -> None:
    assert f"## `{package}`" in LIBRARY


def test_public_modules_are_packages_and_private_ones_start_with_an_underscore() -> None:
    root = Path(importlib.import_module("meshp2p").__file__ or "").parent
    for path in root.rglob("*.py"):
        if path.name != "__init__.py":
            assert path.name.startswith("_"), f"{path.relative_to(root)} is not private"
    top = sorted(p.name for p in root.glob("*.py"))
    assert len(top) <= 5, top
