"""go_checks' host side: the node's host and hivemind's go-libp2p daemon, one direction.

Usage: ``go_app.py P2PD LISTEN DIRECTION SOCKET`` with DIRECTION ``py->go`` (the host
dials the daemon) or ``go->py`` (the daemon dials the host, told so by its control
protocol's CONNECT request on SOCKET: a length-prefixed protobuf, written by hand).
Either way the host then pings the daemon (``/ipfs/ping/1.0.0``) over that connection
and prints ``go_app: DIRECTION over TRANSPORT: ping X ms``; the exit code is the verdict.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import multiaddr
import trio
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import info_from_p2p_addr

from meshp2p.transport import mesh_host

P2PD, LISTEN, DIRECTION, SOCK = sys.argv[1:5]
PING = "/ipfs/ping/1.0.0"


def uvarint(n):
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def field(num, wire, value):
    key = uvarint((num << 3) | wire)
    return key + (uvarint(value) if wire == 0 else uvarint(len(value)) + value)


def start_daemon():
    proc = subprocess.Popen(
        [P2PD, f"-listen=/unix{SOCK}", f"-hostAddrs={LISTEN}", "-b=false"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    peer, addr, lines = None, None, []
    while addr is None:
        line = proc.stdout.readline()
        if not line:
            raise SystemExit(f"p2pd exited: {' | '.join(lines[-3:])}")
        lines.append(line.strip())
        if line.startswith("Peer ID:"):
            peer = line.split(":", 1)[1].strip()
        elif line.startswith("/ip"):
            addr = line.strip()
    return proc, peer, addr


async def ping(host, peer):
    stream = await host.new_stream(peer, [PING])
    payload = os.urandom(32)
    start = time.perf_counter()
    await stream.write(payload)
    got = b""
    while len(got) < 32:
        got += await stream.read(32 - len(got))
    if got != payload:
        raise SystemExit("ping answer differs from what was sent")
    return (time.perf_counter() - start) * 1000


async def main():
    listen = [multiaddr.Multiaddr(LISTEN)]
    host = mesh_host(create_new_key_pair(), listen)
    proc, peer, addr = start_daemon()
    try:
        async with host.run(listen):
            go = ID.from_base58(peer)
            with trio.fail_after(15):
                if DIRECTION == "py->go":
                    info = info_from_p2p_addr(multiaddr.Multiaddr(f"{addr}/p2p/{peer}"))
                    await host.connect(info)
                else:
                    kind = listen[0].protocols()[1].name
                    ours = next(a for a in host.get_addrs() if a.protocols()[1].name == kind)
                    bare = multiaddr.Multiaddr(str(ours).split("/p2p/")[0])
                    connect = (
                        field(1, 2, host.get_id().to_bytes())
                        + field(2, 2, bare.to_bytes())
                        + field(3, 0, 10)
                    )
                    request = field(1, 0, 1) + field(2, 2, connect)
                    sock = await trio.open_unix_socket(SOCK)
                    await sock.send_all(uvarint(len(request)) + request)
                    answer = await sock.receive_some(4096)
                    if answer[1:3] != b"\x08\x00":
                        why = answer[3:].decode(errors="replace")
                        raise SystemExit(f"p2pd could not connect: {why}")
                conns = host.get_network().connections.get(go, [])
                if not conns:
                    raise SystemExit("no connection to the go peer")
                muxed = conns[0].muxed_conn
                kind = "quic" if getattr(muxed, "transport_name", "") == "quic" else "tcp"
                outbound = muxed.is_initiator
                if outbound != (DIRECTION == "py->go"):
                    raise SystemExit(f"the wrong side made the connection (ours: {outbound})")
                ms = await ping(host, go)
            print(f"go_app: {DIRECTION} over {kind}: ping {ms:.1f} ms")
    finally:
        proc.kill()


trio.run(main)
