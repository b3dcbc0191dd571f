"""Runs inside Pyodide, next to the Worker: workerd's Python-side glue, plus the harness's hooks.

* `collect_entrypoint_classes` and `wrapper_func` do what workerd's own introspection module does
  (docs/cloudflare.md §1): find the exported entrypoint classes and their public methods,
  and call `fetch`/RPC methods through `workers.python_from_rpc` / `python_to_rpc`.
* `install_failure_hooks` records the Python traceback of every exception the Worker logs as an
  ``unexpected_error`` (the log line itself carries only the type), so failing tests show it.
* `import_under_entropy_guard` re-imports modules with randomness, wall-clock reads and sockets
  forbidden, as production forbids top-level entropy (the memory snapshot is taken after import).
* `run_probe` runs a probe test's Python source against the fakes.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import sys
import traceback
from collections.abc import Callable, Iterator
from inspect import isawaitable, isclass
from pathlib import Path
from types import FunctionType, ModuleType
from typing import Any

import js
from pyodide.code import relaxed_call
from pyodide.ffi import to_js
from workers import (
    DurableObject,
    WorkerEntrypoint,
    WorkflowEntrypoint,
    python_from_rpc,
    python_to_rpc,
)

# ----------------------------------------------------------------------------- entry glue


def _class_attribute(cls: type, name: str) -> object:
    """The attribute as stored on the first class of the MRO that has it (no descriptors run)."""
    for base in cls.__mro__:
        if name in base.__dict__:
            return base.__dict__[name]
    return None


def collect_methods(cls: type) -> list[str]:
    return sorted(
        name
        for name in dir(cls)
        if not name.startswith("_") and isinstance(_class_attribute(cls, name), FunctionType)
    )


def _collect(module: ModuleType, base: type) -> list[dict[str, Any]]:
    if hasattr(module, "__all__"):
        keys = list(module.__all__)
    else:
        keys = [key for key in dir(module) if not key.startswith("_")]
    found = []
    for key in keys:
        value = getattr(module, key)
        if isclass(value) and issubclass(value, base) and value is not base:
            found.append({"className": value.__name__, "methodNames": collect_methods(value)})
    return found


def collect_entrypoint_classes(module: ModuleType) -> Any:
    result = {
        "durableObjects": _collect(module, DurableObject),
        "workerEntrypoints": _collect(module, WorkerEntrypoint),
        "workflowEntrypoints": _collect(module, WorkflowEntrypoint),
    }
    return to_js(result, dict_converter=js.Object.fromEntries)


async def wrapper_func(relaxed: bool, inst: Any, prop: str, *args: Any, **kwargs: Any) -> Any:
    """`fetch` and RPC calls: arguments in through python_from_rpc, the result out through
    python_to_rpc (a workers.Response leaves as its JS object)."""
    method = getattr(inst, prop)
    py_args = [python_from_rpc(arg) for arg in args]
    py_kwargs = {key: python_from_rpc(value) for key, value in kwargs.items()}
    if relaxed:
        result = relaxed_call(method, *py_args, **py_kwargs)
    else:
        result = method(*py_args, **py_kwargs)
    if isawaitable(result):
        result = await result
    return python_to_rpc(result)


# ----------------------------------------------------------------------------- failures

FAILURES: list[dict[str, str]] = []


def install_failure_hooks() -> int:
    """Wrap `objects.web.log_failure` wherever it was imported; returns how many names."""
    web = sys.modules.get("objects.web")
    original = getattr(web, "log_failure", None)
    if original is None or getattr(original, "__harness_hook__", False):
        return 0

    def log_failure(handler: str, exc: BaseException, **fields: str) -> None:
        FAILURES.append(
            {
                "handler": handler,
                "type": type(exc).__name__,
                "traceback": "".join(traceback.format_exception(exc)),
            }
        )
        original(handler, exc, **fields)

    log_failure.__harness_hook__ = True  # type: ignore[attr-defined]
    patched = 0
    for module in list(sys.modules.values()):
        if getattr(module, "log_failure", None) is original:
            module.log_failure = log_failure  # type: ignore[attr-defined]
            patched += 1
    return patched


def take_failures() -> str:
    taken = list(FAILURES)
    FAILURES.clear()
    return json.dumps(taken)


# ----------------------------------------------------------------------------- entropy guard


class ForbiddenAtImportError(RuntimeError):
    """A module drew randomness, read the wall clock or opened a socket while being imported."""


def _forbidden(name: str) -> Callable[..., Any]:
    def refuse(*_args: Any, **_kwargs: Any) -> Any:
        raise ForbiddenAtImportError(
            f"{name}() called at import time: production runs module top-level code before the "
            "memory snapshot, where entropy is disallowed ('Disallowed operation called within "
            "global scope'); draw ids and timestamps inside handlers"
        )

    return refuse


@contextlib.contextmanager
def entropy_guard() -> Iterator[None]:
    import os
    import random
    import secrets
    import socket
    import time
    import uuid

    targets: list[tuple[Any, str, str]] = [
        (os, "urandom", "os.urandom"),
        (random, "_urandom", "random (SystemRandom)"),
        (random.Random, "seed", "random.Random().seed"),
        (secrets, "token_bytes", "secrets.token_bytes"),
        (secrets, "token_hex", "secrets.token_hex"),
        (secrets, "token_urlsafe", "secrets.token_urlsafe"),
        (secrets, "randbelow", "secrets.randbelow"),
        (secrets, "choice", "secrets.choice"),
        (uuid, "uuid1", "uuid.uuid1"),
        (uuid, "uuid4", "uuid.uuid4"),
        (time, "time", "time.time"),
        (time, "time_ns", "time.time_ns"),
        (socket, "socket", "socket.socket"),
        (socket, "create_connection", "socket.create_connection"),
        (socket, "getaddrinfo", "socket.getaddrinfo"),
    ]
    for name in (
        "random", "randint", "randrange", "choice", "choices", "shuffle", "sample", "uniform",
        "getrandbits", "randbytes", "gauss", "normalvariate", "betavariate", "expovariate",
        "triangular",
    ):
        targets.append((random, name, f"random.{name}"))
    saved = [(owner, attr, owner.__dict__.get(attr, getattr(owner, attr))) for owner, attr, _ in
             targets]
    try:
        for owner, attr, label in targets:
            setattr(owner, attr, _forbidden(label))
        yield
    finally:
        for owner, attr, value in saved:
            setattr(owner, attr, value)


def source_modules(root: str) -> list[str]:
    """Every importable module under ``root`` (the Worker's /session/metadata), python_modules
    excluded."""
    base = Path(root)
    names = []
    for path in sorted(base.rglob("*.py")):
        relative = path.relative_to(base)
        if relative.parts[0] == "python_modules" or "__pycache__" in relative.parts:
            continue
        parts = list(relative.with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if parts:
            names.append(".".join(parts))
    return names


def import_under_entropy_guard(root: str) -> str:
    """Import every module of the Worker afresh with entropy forbidden; JSON list of failures.

    Dependencies (stdlib, pydantic, ...) are imported once without the guard first, so only the
    Worker's own top-level code runs guarded. The modules loaded before are put back afterwards,
    so the running Worker keeps its classes.
    """
    names = source_modules(root)
    roots = {name.split(".")[0] for name in names}
    added = root not in sys.path
    if added:
        sys.path.insert(0, root)
    for name in names:  # first pass: load their dependencies without the guard
        with contextlib.suppress(Exception):
            importlib.import_module(name)
    owned = {key: mod for key, mod in sys.modules.items() if key.split(".")[0] in roots}
    failures = []
    try:
        for key in owned:
            del sys.modules[key]
        with entropy_guard():
            for name in names:
                try:
                    importlib.import_module(name)
                except BaseException as exc:
                    failures.append(
                        {
                            "module": name,
                            "error": f"{type(exc).__name__}: {exc}",
                            "traceback": "".join(traceback.format_exception(exc)),
                        }
                    )
    finally:
        for key in [key for key in sys.modules if key.split(".")[0] in roots]:
            del sys.modules[key]
        sys.modules.update(owned)
        if added:
            sys.path.remove(root)
    return json.dumps({"modules": names, "failures": failures})


# ----------------------------------------------------------------------------- probes


async def run_probe(source: str, fakes: Any) -> str:
    """Run a probe: ``source`` defines ``main(h)`` (sync or async); its result is JSON-encoded."""
    namespace: dict[str, Any] = {"__name__": "probe"}
    exec(compile(source, "<probe>", "exec"), namespace)
    result = namespace["main"](fakes)
    if isawaitable(result):
        result = await result
    return json.dumps(result)
