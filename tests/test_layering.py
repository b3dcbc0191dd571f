"""The architecture, checked: the core stays platform-free and the Worker bundle stays clean."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CORE = ROOT / "src" / "rooms"
FORBIDDEN_IN_CORE = {"js", "pyodide", "workers", "asyncio", "sqlite3", "aiohttp", "websockets",
                     "roomsd", "objects", "threading", "socket"}
FORBIDDEN_IN_BUNDLE = {"asyncio.base_events", "sqlite3", "aiohttp", "websockets", "roomsd",
                       "socket", "threading", "subprocess"}


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize("path", sorted(CORE.glob("*.py")), ids=lambda p: p.name)
def test_core_imports_nothing_platform_specific(path: Path) -> None:
    """src/rooms runs on Pyodide and CPython alike: no js, workers, asyncio or sqlite3."""
    roots = {name.split(".")[0] for name in imported_modules(path)}
    assert not roots & FORBIDDEN_IN_CORE


@pytest.mark.parametrize("path", sorted((ROOT / "src").rglob("*.py")),
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_worker_bundle_imports_no_host_only_module(path: Path) -> None:
    """Nothing uploaded to Cloudflare imports servers, sqlite3 or the local runtime."""
    modules = imported_modules(path)
    roots = {name.split(".")[0] for name in modules}
    assert not (roots | modules) & FORBIDDEN_IN_BUNDLE


def test_no_module_shadows_a_runtime_module() -> None:
    """workers.py, js.py or asgi.py under src/ would shadow the runtime's own modules."""
    shadows = {"workers.py", "js.py", "asgi.py", "pyodide.py"}
    assert not {p.name for p in (ROOT / "src").rglob("*.py")} & shadows
