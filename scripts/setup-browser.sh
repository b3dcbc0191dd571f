#!/usr/bin/env bash
# The browser tier's one system dependency: Debian's Chromium, driven by Playwright for Python
# through `executable_path` (tests/browser/conftest.py). Playwright's own browser downloads are
# never used. Installs only when missing; needs root (CI and the dev machines run as root).
set -euo pipefail

CHROMIUM="${ROOMS_CHROMIUM:-/usr/bin/chromium}"
if [ -x "$CHROMIUM" ]; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "setup-browser: $CHROMIUM is missing; run as root or: sudo apt-get install -y chromium" >&2
    exit 1
fi
echo "setup-browser: installing Debian's chromium (once per machine)" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# fonts-liberation gives the page metric-compatible sans/mono fonts in screenshots.
apt-get install -y -qq --no-install-recommends chromium fonts-liberation >/dev/null
"$CHROMIUM" --version >&2
