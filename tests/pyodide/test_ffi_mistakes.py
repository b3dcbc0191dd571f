"""The tier catches the FFI mistakes it exists for: a copy of src/ with one deliberately broken
conversion is booted in a second harness, and the same upgrade that passes on src/ fails there,
with the Python traceback from inside Pyodide naming the refusal."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.pyodide.conftest import SECRET, token
from tests.pyodide.harness_client import HarnessUnavailableError, PyodideHarness

ROOT = Path(__file__).resolve().parents[2]
MUTATION = (
    "objects/platform.py",
    "self._ctx.acceptWebSocket(ws, ffi.js_array(tags))",
    "self._ctx.acceptWebSocket(ws, tags)",  # a Python list reaches JS as a PyProxy
)


def test_passing_a_python_list_as_tags_fails_the_upgrade(tmp_path: Path) -> None:
    source, before, after = MUTATION
    copy = tmp_path / "src"
    shutil.copytree(ROOT / "src", copy, ignore=shutil.ignore_patterns("__pycache__"))
    target = copy / source
    text = target.read_text()
    if before not in text:
        pytest.fail(f"{source} no longer contains {before!r}: update MUTATION to the line that "
                    "converts the tags for acceptWebSocket")
    target.write_text(text.replace(before, after))
    try:
        harness = PyodideHarness(copy)
    except HarnessUnavailableError as exc:  # same rule as the session fixture
        if os.environ.get("ROOMS_PYODIDE_REQUIRED"):
            pytest.fail(f"the Pyodide harness is required here: {exc}")
        pytest.skip(f"Pyodide harness not installed: {exc}")
    try:
        world = harness.world(vars={"JWT_SECRET": SECRET})
        result = world.upgrade("lobby", token("alice"))
        diag = harness.take_diagnostics(world)
    finally:
        harness.close()
    assert result.status == 500
    assert any('"event":"unexpected_error"' in line for line in diag["logs"])
    (failure,) = diag["failures"]
    assert "parameter 2 is not of type 'Array'" in failure["traceback"]
    assert 'File "/session/metadata/objects/platform.py"' in failure["traceback"]
