#!/usr/bin/env bash
# The browser tier's dependencies (tests/browser/conftest.py):
# - Debian's Chromium, driven by Playwright for Python through `executable_path` (Playwright's
#   own browser downloads are never used), with fonts for the screenshots: fonts-liberation
#   (metric-compatible sans/mono) and fonts-noto-color-emoji (emoji, not empty boxes);
# - axe-core from npm, pinned in tests/browser/package-lock.json, which the accessibility tests
#   inject into the page.
# Installs only what is missing; the Debian packages need root (CI and the dev machines run as
# root).
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
CHROMIUM="${ROOMS_CHROMIUM:-/usr/bin/chromium}"
PACKAGES=(chromium fonts-liberation fonts-noto-color-emoji)

missing=()
for package in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" \
        || missing+=("$package")
done
if [ ! -x "$CHROMIUM" ] || [ "${#missing[@]}" -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "setup-browser: missing ${missing[*]:-$CHROMIUM}; run as root or:" \
             "sudo apt-get install -y ${PACKAGES[*]}" >&2
        exit 1
    fi
    echo "setup-browser: installing ${missing[*]:-chromium} (once per machine)" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]:-chromium}" >/dev/null
    "$CHROMIUM" --version >&2
fi

# axe-core: `npm ci` when the installed copy is not the locked one. npm comes from PATH, else
# the project's pinned Node (make pyodide-setup), else Debian's.
browser="$here/tests/browser"
locked=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["packages"]["node_modules/axe-core"]["version"])' \
    "$browser/package-lock.json")
installed=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["version"])' \
    "$browser/node_modules/axe-core/package.json" 2>/dev/null || true)
if [ "$locked" != "$installed" ]; then
    pinned_node="$here/tests/pyodide/harness/node_modules/node/bin"
    if ! command -v npm >/dev/null && [ -x "$pinned_node/npm" ]; then
        export PATH="$pinned_node:$PATH"
    fi
    if ! command -v npm >/dev/null; then
        if [ "$(id -u)" -ne 0 ]; then
            echo "setup-browser: npm is missing; run as root or: sudo apt-get install -y npm" >&2
            exit 1
        fi
        apt-get install -y -qq --no-install-recommends npm >/dev/null
    fi
    echo "setup-browser: npm ci (axe-core $locked)" >&2
    npm_config_cache="$here/.cache/npm" npm ci --prefix "$browser" --no-audit --no-fund \
        --prefer-offline >/dev/null
fi
