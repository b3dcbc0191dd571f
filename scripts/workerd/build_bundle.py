"""Build the Pyodide bundle that local workerd runs Python Workers from, offline.

workerd normally downloads a Pyodide bundle and checks its SHA-256 against a table compiled into
the binary; a bundle built here would fail that check. The one it does not check is the *dev*
bundle, ``pyodide_dev.capnp.bin``, used under the experimental compatibility flag
``python_workers_development`` (docs/cloudflare.md, "Real workerd, offline"). This script writes
that file from npm ``pyodide`` (the same package the Pyodide tier runs), applying the source
patches workerd applies to ``pyodide.asm.mjs`` when it builds its own bundles.

    python scripts/workerd/build_bundle.py PYODIDE_DIR OUT_DIR

The output is deterministic: the same inputs give the same bytes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import capnp  # pycapnp, the `workerd` dependency group (no types: pyproject's mypy overrides)

SCHEMA = Path(__file__).with_name("pyodide_bundle.capnp")
BUNDLE_NAME = "pyodide_dev.capnp.bin"
MODULE_PREFIX = "pyodideRuntime-internal:"

# Calls workerd replaces with its own wrappers (deterministic time and randomness, no eval, wasm
# compiled through the runtime, shared libraries read from the bundle's file system).
_NO_EVAL = "(() => { throw new Error('eval is not available in workerd'); })()"
REPLACEMENTS: list[tuple[str, str]] = [
    ("new WebAssembly.Module", "newWasmModule"),
    ("WebAssembly.instantiate", "wasmInstantiate"),
    ("Date.now", "monotonicDateNow"),
    ("crypto.getRandomValues(", "getRandomValues(Module, "),
    ("eval(func)", _NO_EVAL),
    ("eval(data)", _NO_EVAL),
    ("eval(UTF8ToString(ptr))", _NO_EVAL),
    (
        "function loadLibData(){",
        "function loadLibData(){var libData=patchedLoadLibData(Module,libName,flags.rpath);"
        "return flags.loadAsync?Promise.resolve(libData):libData}"
        "function emscriptenLoadLibData(){",
    ),
    ("getMemory(", "Module.getMemoryPatched(Module, libName, "),
]
EXPORT = "export default _createPyodideModule;"
PRELUDE = (
    "import { addEventListener, getRandomValues, location, monotonicDateNow, newWasmModule, "
    'patchedLoadLibData, wasmInstantiate } from "pyodide-internal:builtin_wrappers";\n'
)


def patch_asm(source: str) -> str:
    """``pyodide.asm.mjs`` as workerd expects it; fails loudly if Pyodide's source moved."""
    for old, new in REPLACEMENTS:
        if old not in source:
            raise SystemExit(f"build-bundle: {old!r} not found in pyodide.asm.mjs")
        source = source.replace(old, new)
    if source.count(EXPORT) != 1:
        raise SystemExit("build-bundle: pyodide.asm.mjs does not end in one default export")
    return source.replace(EXPORT, f"{PRELUDE}{EXPORT}\nexport {{ _createPyodideModule }};")


def build(pyodide: Path, out_dir: Path) -> Path:
    schema = capnp.load(str(SCHEMA))
    asm = patch_asm((pyodide / "pyodide.asm.mjs").read_text(encoding="utf-8"))
    modules = [
        ("pyodide.asm", "src", asm.encode()),
        ("pyodide.asm.wasm", "wasm", (pyodide / "pyodide.asm.wasm").read_bytes()),
        ("python_stdlib.zip", "data", (pyodide / "python_stdlib.zip").read_bytes()),
    ]
    bundle = schema.Bundle.new_message()
    entries = bundle.init("modules", len(modules))
    for entry, (name, kind, content) in zip(entries, modules, strict=True):
        entry.name = MODULE_PREFIX + name
        entry.type = "internal"
        setattr(entry, kind, content)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / BUNDLE_NAME
    partial = target.with_suffix(".partial")
    partial.write_bytes(bundle.to_bytes())
    partial.replace(target)
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pyodide", type=Path, help="the npm pyodide package directory")
    parser.add_argument("out_dir", type=Path, help=f"where to write {BUNDLE_NAME}")
    args = parser.parse_args()
    target = build(args.pyodide, args.out_dir)
    print(f"build-bundle: wrote {target} ({target.stat().st_size:,} bytes)", file=sys.stderr)


if __name__ == "__main__":
    main()
