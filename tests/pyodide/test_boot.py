"""The interpreter, the layout and the pins: what production runs is what this tier runs."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

from tests.pyodide.harness_client import PyodideHarness

ROOT = Path(__file__).resolve().parents[2]
HARNESS = ROOT / "tests" / "pyodide" / "harness"
REQUIREMENTS = ROOT / "tests" / "pyodide" / "requirements-pyodide.txt"


def pins() -> dict[str, str]:
    text = REQUIREMENTS.read_text().replace("\\\n", " ")
    found = re.findall(r"^([A-Za-z0-9_.-]+)==([^\s]+)", text, flags=re.MULTILINE)
    return {name.lower().replace("_", "-"): version for name, version in found}


def test_production_interpreter(harness: PyodideHarness) -> None:
    """Pyodide 314 (production requests pyodide_314.0.6), CPython 3.14, Node 24 with JSPI."""
    info = harness.boot_info
    assert info["pyodide"] == "314.0.6"
    assert info["python"].startswith("3.14.")
    assert info["node"].startswith("24.")
    assert info["jspi"] is True


def test_entrypoints_are_found_as_workerd_finds_them(harness: PyodideHarness) -> None:
    """The main module exports Default and Room; Room's handlers are exact camelCase names."""
    classes = harness.boot_info["classes"]
    assert [c["className"] for c in classes["workerEntrypoints"]] == ["Default"]
    (room,) = classes["durableObjects"]
    assert room["className"] == "Room"
    assert {"fetch", "alarm", "webSocketMessage", "webSocketClose", "webSocketError"} <= set(
        room["methodNames"]
    )


def test_layout_matches_the_runtime(harness: PyodideHarness) -> None:
    """src/ at /session/metadata (first on sys.path), vendored packages before site-packages,
    their .pth files processed, and the SDK imported from there."""
    facts = harness.call("py.run", expression="""{
        "path": __import__("sys").path,
        "worker": __import__("sys").modules["worker"].__file__,
        "workers": __import__("workers").__file__,
        "pth": "_workers_sdk_patch_loader" in __import__("sys").modules,
        "sdk": __import__("importlib.metadata").metadata.version("workers-runtime-sdk"),
        "pydantic_core": __import__("pydantic_core").__version__,
        "msgspec": __import__("msgspec").__version__,
    }""")
    path = facts["path"]
    assert path[0] == "/session/metadata"
    modules = path.index("/session/metadata/python_modules")
    assert modules < min(i for i, p in enumerate(path) if "site-packages" in p)
    assert facts["worker"] == "/session/metadata/worker.py"
    assert facts["workers"] == "/session/metadata/python_modules/workers/__init__.py"
    assert facts["pth"] is True
    assert facts["sdk"] == pins()["workers-runtime-sdk"]
    assert facts["pydantic_core"] == pins()["pydantic-core"]
    assert facts["msgspec"] == pins()["msgspec"]


def test_vendored_versions_match_the_lockfile() -> None:
    """The wheels tested in Pyodide are the versions uv.lock pins for the Worker's dependencies."""
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    locked = {p["name"]: p["version"] for p in lock["package"]}
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pinned = pins()
    for requirement in project["dependencies"]:
        name = re.split(r"[=<>!~\[; ]", requirement, maxsplit=1)[0].lower()
        assert name in pinned, f"{name} is a Worker dependency but is not vendored for Pyodide"
    for name, version in pinned.items():
        assert locked.get(name) == version, (
            f"{name}: uv.lock has {locked.get(name)}, the Pyodide tier vendors {version}: update "
            f"{REQUIREMENTS.relative_to(ROOT)} (version and the sha256 of the cp314 "
            "pyemscripten_2026_0_wasm32 or py3-none-any wheel on PyPI)"
        )


def test_npm_tools_are_pinned_exactly() -> None:
    package = json.loads((HARNESS / "package.json").read_text())
    lock = json.loads((HARNESS / "package-lock.json").read_text())
    for name, version in package["dependencies"].items():
        assert re.fullmatch(r"\d+\.\d+\.\d+", version), f"{name} is not pinned: {version}"
        assert lock["packages"][f"node_modules/{name}"]["version"] == version
    assert package["dependencies"]["pyodide"] == "314.0.6"
    assert package["dependencies"]["node"].startswith("24.")
