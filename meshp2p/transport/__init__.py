"""Transport: a libp2p host built the way a node builds it, and the framing on top.

- ``mesh_host`` gives a py-libp2p host QUIC (datagrams sized to the path, windows
  granted as the application reads) and TCP with a lean Noise transport phase and
  yamux (the same wire protocols as py-libp2p's, at a fraction of its CPU per
  frame), one connection per peer; ``transport_addrs`` orders addresses as a node
  dials them (QUIC first).
- ``load_or_create_key`` / ``peer_id``: a node's persistent Ed25519 identity.
- ``encode_frame`` / ``FrameDecoder``: the varint-length-prefixed CBOR frames of
  every ``/mesh/*`` protocol, with size and depth limits; ``read_message`` and the
  ``*_quietly`` helpers drive them over a libp2p stream.
"""

from ._host import (
    DEFAULT_LISTEN,
    addrs_by_peer,
    dialable_addrs,
    mesh_host,
    parse_listen,
    transport_addrs,
    transport_rank,
)
from ._identity import load_or_create_key, peer_id
from ._noise import PROTOCOL_ID as NOISE_PROTOCOL_ID
from ._noise import NoiseTransport
from ._quic_path import QuicPathTuner
from ._streams import close_quietly, close_write, read_message, read_some, reset_quietly
from ._wire import FrameDecoder, decode_cbor, encode_cbor, encode_frame
from ._yamux import PROTOCOL_ID as YAMUX_PROTOCOL_ID
from ._yamux import Yamux, honour_muxer_opt

__all__ = [
    "DEFAULT_LISTEN",
    "NOISE_PROTOCOL_ID",
    "YAMUX_PROTOCOL_ID",
    "FrameDecoder",
    "NoiseTransport",
    "QuicPathTuner",
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
]
