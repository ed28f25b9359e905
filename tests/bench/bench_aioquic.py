"""Benchmark: the ceiling of any QUIC data plane built on aioquic, with no I/O at all.

Run with ``python tests/bench/bench_aioquic.py``. Two aioquic ``QuicConnection``
objects in one process hand each other their datagrams directly (no sockets, no
event loop, no py-libp2p): one stream carries 64 MiB, for several datagram sizes.
Whatever drives aioquic (py-libp2p's QUIC transport, or a driver of our own) pays
at least this much CPU per datagram, so this bounds what QUIC can reach here.
Results go to ``docs/benchmarks/aioquic.json``.
"""

from __future__ import annotations

import argparse
import datetime
import sys
import time
from pathlib import Path
from typing import Any

from aioquic.quic import events
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))

from _bench import machine, write_result  # noqa: E402

MiB = 1 << 20
WINDOW = 16 * MiB
ADDR = ("127.0.0.1", 4433)


def _certificate() -> tuple[Any, Any]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(datetime.datetime(2020, 1, 1))
        .not_valid_after(datetime.datetime(2040, 1, 1))
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _pump(src: QuicConnection, dst: QuicConnection) -> int:
    sent = 0
    for datagram, _ in src.datagrams_to_send(now=time.monotonic()):
        dst.receive_datagram(datagram, ADDR, now=time.monotonic())
        sent += 1
    return sent


def measure(datagram_size: int, total: int) -> dict[str, float]:
    cert, key = _certificate()

    def config(is_client: bool) -> QuicConfiguration:
        c = QuicConfiguration(
            is_client=is_client,
            alpn_protocols=["bench"],
            max_datagram_size=datagram_size,
            max_data=WINDOW,
            max_stream_data=WINDOW,
        )
        c.verify_mode = 0
        if not is_client:
            c.certificate, c.private_key = cert, key
        return c

    client = QuicConnection(configuration=config(True))
    server = QuicConnection(
        configuration=config(False),
        original_destination_connection_id=client.original_destination_connection_id,
    )
    client.connect(ADDR, now=time.monotonic())
    for _ in range(10):  # handshake
        _pump(client, server)
        _pump(server, client)
    while server.next_event() is not None:
        pass
    while client.next_event() is not None:
        pass
    stream = client.get_next_available_stream_id()
    chunk = b"\x5a" * (64 * 1024)
    sent = received = datagrams = 0
    start = time.perf_counter()
    while received < total:
        if sent < total and sent - received < 4 * MiB:
            client.send_stream_data(stream, chunk)
            sent += len(chunk)
        datagrams += _pump(client, server)
        while (event := server.next_event()) is not None:
            if isinstance(event, events.StreamDataReceived):
                received += len(event.data)
        datagrams += _pump(server, client)  # ACKs and flow-control updates
        while client.next_event() is not None:
            pass
    elapsed = time.perf_counter() - start
    return {
        "datagram_size": datagram_size,
        "mb_s": total / elapsed / 1e6,
        "datagrams": datagrams,
        "us_per_datagram": elapsed / datagrams * 1e6,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=64)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks" / "aioquic.json")
    args = parser.parse_args()
    rows = []
    for size in (1200, 1452, 8972, 16_000):
        row = measure(size, args.mib * MiB)
        rows.append(row)
        print(
            f"datagram {size:6d} B: {row['mb_s']:7.1f} MB/s, {row['datagrams']:6d} datagrams "
            f"(both ways), {row['us_per_datagram']:6.1f} us each",
            flush=True,
        )
    print("(aioquic alone, both ends in one process, no sockets: the ceiling for any driver)")
    write_result(args.out, {"machine": machine(), "mib": args.mib, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
