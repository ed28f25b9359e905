"""Ask a mesh node for a chat answer over /mesh/route, from a program that is no node.

Usage: python route_chat.py INVITE_TOKEN [MODEL]

The script joins the mesh as a passive client (it proves the mesh secret but
serves nothing and takes no part in gossip), sends one streamed chat request to
the node that issued the token, and prints the answer as it arrives.
"""

import json
import sys

import trio
from libp2p.crypto.ed25519 import create_new_key_pair

from meshp2p.mesh import InviteToken, MeshService
from meshp2p.route import route_request

DEFAULT_MODEL = "gemma-3-270m-Q4_K_M"


async def main(token_text: str, model: str) -> None:
    token = InviteToken.decode(token_text)
    node_id = token.bootstrap[0].rsplit("/p2p/", 1)[1]
    mesh = MeshService(
        create_new_key_pair(),  # a throwaway identity: this program is no node
        token.credentials,
        listen=["/ip4/127.0.0.1/udp/0/quic-v1", "/ip4/127.0.0.1/tcp/0"],
        client=True,  # no gossip, no DHT: API traffic only
    )
    body = {
        "model": model,
        "messages": [{"role": "user", "content": "What is the capital of France?"}],
        "max_tokens": 32,
        "stream": True,
    }
    async with trio.open_nursery() as nursery:
        await nursery.start(mesh.run)
        async with route_request(
            mesh, node_id, json.dumps(body).encode(), addrs=token.bootstrap
        ) as response:
            print(f"status {response.status} from {response.node_id[-8:]}", file=sys.stderr)
            buffer = b""
            async for chunk in response.body:
                buffer += chunk
                while b"\n\n" in buffer:
                    event, buffer = buffer.split(b"\n\n", 1)
                    data = event.removeprefix(b"data: ")
                    if data == b"[DONE]":
                        continue
                    for choice in json.loads(data).get("choices", []):
                        print(choice["delta"].get("content") or "", end="", flush=True)
        print()
        nursery.cancel_scope.cancel()


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    trio.run(main, sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else DEFAULT_MODEL)
