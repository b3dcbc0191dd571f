"""Production forbids entropy at import time: the memory snapshot is taken after the Worker's
top-level code runs, so `random`, `uuid4()`, `os.urandom` there fail with "Disallowed operation
called within global scope". Wall-clock reads and sockets at import are bugs of the same kind
(ids and timestamps frozen into the snapshot).

Two checks: every module under src/ imported afresh inside Pyodide with those calls made to
raise, and a lint of the modules' top-level code on the host (which also sees branches the
import does not take).
"""

from __future__ import annotations

import ast
import fnmatch
from pathlib import Path

import pytest

from tests.pyodide.harness_client import PyodideHarness

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src"
FORBIDDEN = (
    "random.*", "secrets.*", "uuid.uuid1", "uuid.uuid4", "os.urandom", "os.getrandom",
    "time.time", "time.time_ns", "datetime.datetime.now", "datetime.datetime.utcnow",
    "datetime.datetime.today", "datetime.date.today", "socket.*", "ssl.*",
)


def test_no_src_module_draws_entropy_at_import_in_pyodide(harness: PyodideHarness) -> None:
    report = harness.call("py.entropy")
    assert {"worker", "objects.room", "objects.platform", "rooms.host"} <= set(report["modules"])
    details = "\n\n".join(f"{f['module']}: {f['error']}\n{f['traceback']}"
                          for f in report["failures"])
    assert report["failures"] == [], details


def test_the_import_guard_catches_each_kind_of_call(harness: PyodideHarness) -> None:
    """The guard itself, on modules that do what src/ must not."""
    modules = {
        "uses_random": "import random\nX = random.randint(1, 6)\n",
        "uses_seeded_random": "import random\nR = random.Random()\n",
        "uses_uuid": "import uuid\nX = uuid.uuid4()\n",
        "uses_secrets": "from secrets import token_hex\nX = token_hex(4)\n",
        "uses_urandom": "import os\nX = os.urandom(4)\n",
        "uses_clock": "import time\nSTARTED = time.time()\n",
        "uses_socket": "import socket\nS = socket.socket()\n",
        "fine": "import random, time\ndef later():\n    return random.random(), time.time()\n",
    }
    files = "\n".join(f"    write({name!r}, {source!r})" for name, source in modules.items())
    report = harness.probe(f"""
import json, os
import _rooms_harness

def write(name, source):
    os.makedirs("/tmp/entropy_probe", exist_ok=True)
    with open(f"/tmp/entropy_probe/{{name}}.py", "w") as f:
        f.write(source)

def main(h):
{files}
    return json.loads(_rooms_harness.import_under_entropy_guard("/tmp/entropy_probe"))
""")
    failed = {f["module"]: f["error"] for f in report["failures"]}
    assert set(failed) == set(modules) - {"fine"}
    assert all(error.startswith("ForbiddenAtImportError") for error in failed.values())
    assert "uuid.uuid4() called at import time" in failed["uses_uuid"]


# --------------------------------------------------------------------------- host lint


def _aliases(tree: ast.Module) -> dict[str, str]:
    names: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                names[alias.asname or alias.name.split(".")[0]] = (
                    alias.name if alias.asname else alias.name.split(".")[0]
                )
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                names[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    return names


def _dotted(node: ast.expr, aliases: dict[str, str]) -> str | None:
    if isinstance(node, ast.Name):
        return aliases.get(node.id, node.id)
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value, aliases)
        return f"{base}.{node.attr}" if base else None
    return None


def import_time_calls(source: str) -> list[tuple[int, str]]:
    """Calls that run when the module is imported: module and class bodies, decorators and
    default arguments, but not function bodies."""
    tree = ast.parse(source)
    aliases = _aliases(tree)
    found: list[tuple[int, str]] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            for expr in [*node.decorator_list, *node.args.defaults, *node.args.kw_defaults]:
                if expr is not None:
                    visit(expr)
            return
        if isinstance(node, ast.Lambda):
            for expr in node.args.defaults:
                visit(expr)
            return
        if isinstance(node, ast.Call):
            name = _dotted(node.func, aliases)
            if name and any(fnmatch.fnmatchcase(name, pattern) for pattern in FORBIDDEN):
                found.append((node.lineno, name))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


@pytest.mark.parametrize("path", sorted(SRC.rglob("*.py")), ids=lambda p: str(p.relative_to(SRC)))
def test_module_top_level_code_draws_no_entropy(path: Path) -> None:
    assert import_time_calls(path.read_text()) == []


def test_the_lint_sees_top_level_calls_and_ignores_function_bodies() -> None:
    source = """
import random as r
from uuid import uuid4
from datetime import datetime
import time

SEED = r.random()
ID = uuid4()

class Config:
    started = datetime.now()

def handler(default=time.time()):
    return r.random(), uuid4(), time.time()
"""
    assert import_time_calls(source) == [
        (7, "random.random"), (8, "uuid.uuid4"), (11, "datetime.datetime.now"),
        (13, "time.time"),
    ]
