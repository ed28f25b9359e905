"""Embed a full meshp2p node in a program and chat through its OpenAI API.

The node starts a new mesh (or rejoins the one its home remembers) and serves
the default model; ``wait_ready`` returns once the model answers.
"""

import httpx
import trio

import meshp2p


async def main() -> None:
    config = meshp2p.NodeConfig(api_port=0, console_port=0)  # any free ports
    async with trio.open_nursery() as nursery:
        node = await nursery.start(meshp2p.Node(config).run)
        with trio.fail_after(300):
            await node.wait_ready()  # the model is loaded
        async with httpx.AsyncClient(base_url=node.api_url, timeout=60) as http:
            reply = await http.post(
                "/chat/completions",
                json={
                    "model": "gemma-3-270m-Q4_K_M",
                    "messages": [{"role": "user", "content": "What is the capital of France?"}],
                    "max_tokens": 64,
                },
            )
        print(reply.json()["choices"][0]["message"]["content"])
        node.stop()  # leave the mesh cleanly; run() returns


trio.run(main)
