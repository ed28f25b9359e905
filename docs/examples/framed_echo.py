"""Two libp2p hosts built the way a node builds them, echoing a CBOR frame.

``meshp2p.transport`` gives the host (QUIC and the lean TCP stack, one connection
per peer) and the framing every ``/mesh/*`` protocol uses.
"""

import multiaddr
import trio
from libp2p.abc import INetStream
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.custom_types import TProtocol
from libp2p.peer.peerinfo import PeerInfo

from meshp2p.transport import FrameDecoder, encode_frame, mesh_host, read_message, transport_addrs

ECHO = TProtocol("/example/echo/1.0.0")


async def echo(stream: INetStream) -> None:
    message = await read_message(stream, FrameDecoder(1024), [])
    if message is not None:
        await stream.write(encode_frame({**message, "t": "echo"}))
    await stream.close()


async def main() -> None:
    listen = [multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]
    server = mesh_host(create_new_key_pair(), listen)
    client = mesh_host(create_new_key_pair(), listen)
    async with server.run(listen), client.run(listen):
        server.set_stream_handler(ECHO, echo)
        addrs = transport_addrs(str(a) for a in server.get_addrs())
        with trio.fail_after(10):
            await client.connect(PeerInfo(server.get_id(), addrs))
            stream = await client.new_stream(server.get_id(), [ECHO])
            await stream.write(encode_frame({"t": "hello", "text": "over the mesh transport"}))
            reply = await read_message(stream, FrameDecoder(1024), [])
        print(reply)
        await stream.close()


trio.run(main)
