#!/usr/bin/env bash
# Installs what the network lab needs beyond iproute2 (ip, tc): Debian's nftables, for
# the NAT routers' masquerading. Needs root for apt-get, as the lab itself does: when
# not root it installs nothing and says so (the lab's tests then skip with the reason).
set -euo pipefail

if command -v nft >/dev/null 2>&1 && command -v ip >/dev/null 2>&1 && command -v tc >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    echo "network lab: not root, nothing installed (its tests skip: they need root)" >&2
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "network lab: needs nft, ip and tc (Debian: apt-get install nftables iproute2)" >&2
    exit 1
fi
echo "network lab: installing Debian's nftables and iproute2"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends nftables iproute2 >/dev/null
nft --version
