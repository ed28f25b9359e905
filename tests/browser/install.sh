#!/usr/bin/env bash
# Installs what the browser tests need: Debian's Chromium (and a font, so screenshots
# show text). Playwright for Python, from the dev extras, drives this Chromium through
# its executable path; it downloads no browser of its own. Fails with one clear line
# when it cannot install.
set -euo pipefail

chromium="${MESHP2P_CHROMIUM:-/usr/bin/chromium}"
if [ -x "$chromium" ] && fc-list 2>/dev/null | grep -q .; then
    exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "browser tests: installing Debian's chromium"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
else
    echo "browser tests: Chromium is needed at $chromium (Debian: apt-get install chromium," \
        "or set MESHP2P_CHROMIUM to a Chromium binary)" >&2
    exit 1
fi
"$chromium" --version
