"""Install what running the Worker in real workerd needs, pinned and cached; a no-op when unchanged.

Needs scripts/setup_pyodide.py first (it installs Node 24, npm ``pyodide`` and the hash-pinned
wheels). Then:

1. wrangler (and with it workerd and miniflare) from the project's package-lock.json, ``npm ci``;
2. the dev Pyodide bundle, built from that same npm ``pyodide`` by scripts/workerd/build_bundle.py
   into .cache/workerd/bundle/ (rebuilt only when an input changed);
3. ``python_modules/``: the unpacked wheels the Pyodide tier tests, which wrangler uploads with
   the Worker (the same tree ``pywrangler`` would vendor, workers-runtime-sdk included).

It writes .cache/workerd/state.json, which local/workerd/ reads.

    python scripts/setup_workerd.py [--force]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PYODIDE_STATE = ROOT / ".cache" / "pyodide" / "state.json"
CACHE = ROOT / ".cache" / "workerd"
STATE = CACHE / "state.json"
BUNDLE_DIR = CACHE / "bundle"
BUILDER = ROOT / "scripts" / "workerd" / "build_bundle.py"
SCHEMA = ROOT / "scripts" / "workerd" / "pyodide_bundle.capnp"
WRAPPER = ROOT / "scripts" / "workerd" / "workerd-offline"
VENDORED = ROOT / "python_modules"
NODE_MODULES = ROOT / "node_modules"
WRANGLER = NODE_MODULES / "wrangler" / "bin" / "wrangler.js"
NPM_STAMP = NODE_MODULES / ".rooms-installed"


def log(message: str) -> None:
    print(f"setup-workerd: {message}", flush=True)


def fingerprint(*paths: Path) -> str:
    sha = hashlib.sha256()
    for path in paths:
        sha.update(path.name.encode() + b"\0" + hashlib.sha256(path.read_bytes()).digest())
    return sha.hexdigest()


def install_wrangler(node: str, force: bool) -> None:
    lock = ROOT / "package-lock.json"
    stamp = fingerprint(lock)
    if not force and NPM_STAMP.exists() and NPM_STAMP.read_text() == stamp and WRANGLER.exists():
        return
    npm = shutil.which("npm")
    if npm is None:
        sys.exit("setup-workerd: npm is required")
    log("npm ci (wrangler, workerd)")
    # Node 24 from the Pyodide tier first on PATH: wrangler's install scripts need Node >= 22.
    env = dict(os.environ, npm_config_cache=str(ROOT / ".cache" / "npm"),
               npm_config_update_notifier="false", npm_config_fund="false",
               npm_config_audit="false", PATH=f"{Path(node).parent}:{os.environ['PATH']}")
    subprocess.run([npm, "ci", "--prefer-offline", "--no-audit", "--no-fund"], cwd=ROOT, env=env,
                   check=True)
    NPM_STAMP.write_text(stamp)


def build_bundle(pyodide: Path, force: bool) -> Path:
    inputs = [pyodide / "pyodide.asm.mjs", pyodide / "pyodide.asm.wasm",
              pyodide / "python_stdlib.zip", BUILDER, SCHEMA]
    stamp_file = BUNDLE_DIR / "inputs.sha256"
    stamp = fingerprint(*inputs)
    bundle = BUNDLE_DIR / "pyodide_dev.capnp.bin"
    if not force and bundle.exists() and stamp_file.exists() and stamp_file.read_text() == stamp:
        return bundle
    log(f"building the dev Pyodide bundle from {pyodide.relative_to(ROOT)}")
    subprocess.run([sys.executable, str(BUILDER), str(pyodide), str(BUNDLE_DIR)], check=True)
    stamp_file.write_text(stamp)
    return bundle


def vendor(unpacked: Path, force: bool) -> None:
    """Copy the unpacked wheels to python_modules/, without caches Pyodide may have written."""
    stamp_file = VENDORED / ".rooms-vendored"
    stamp = (unpacked / ".complete").read_text()
    if not force and stamp_file.exists() and stamp_file.read_text() == stamp:
        return
    log(f"vendoring {unpacked.relative_to(ROOT)} into python_modules/")
    if VENDORED.exists():
        shutil.rmtree(VENDORED)
    shutil.copytree(unpacked, VENDORED,
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".complete"))
    stamp_file.write_text(stamp)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true", help="reinstall and rebuild everything")
    args = parser.parse_args()
    if not PYODIDE_STATE.exists():
        sys.exit("setup-workerd: run scripts/setup_pyodide.py first (make pyodide-setup)")
    pyodide_state = json.loads(PYODIDE_STATE.read_text())
    node = pyodide_state["node"]
    install_wrangler(node, args.force)
    harness_modules = Path(pyodide_state["harness"]).parent / "node_modules"
    bundle = build_bundle(harness_modules / "pyodide", args.force)
    vendor(Path(pyodide_state["python_modules"]), args.force)
    state = {
        "node": node,
        "wrangler": str(WRANGLER),
        "workerd": str(WRAPPER),
        "bundle": str(bundle),
        "pyodide_version": pyodide_state["pyodide_version"],
        "python_modules": str(VENDORED),
    }
    CACHE.mkdir(parents=True, exist_ok=True)
    if not STATE.exists() or json.loads(STATE.read_text()) != state:
        STATE.write_text(json.dumps(state, indent=2) + "\n")
    version = json.loads((NODE_MODULES / "wrangler" / "package.json").read_text())["version"]
    log(f"ready: wrangler {version}, pyodide {state['pyodide_version']} dev bundle")


if __name__ == "__main__":
    main()
