"""The production-interpreter tier: src/worker.py and src/objects/ unchanged, in real Pyodide.

One Node 24 process per test session boots Pyodide 314 (the version production runs) with the
Worker's vendored dependencies and imports `worker` from /session/metadata, as workerd does
(harness/server.mjs; docs/cloudflare.md §1). Each test gets a fresh `World` in it: its own objects,
D1 (with migrations/ applied) and R2, and env vars on top of wrangler.jsonc's bindings.

After each test, the world must be clean: no exception escaped a handler, the Worker logged no
``unexpected_error`` (its Python traceback is shown when it did), and the fakes saw no silent FFI
coercion (bytes sent as text, a bool bound as 'true', ...), unless the test said it expects one.

`make test` installs everything first (`make pyodide-setup`) and sets ROOMS_PYODIDE_REQUIRED=1,
so a missing install fails there; a bare `pytest` without the install skips this tier.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest

from tests.pyodide.harness_client import (
    HarnessUnavailableError,
    PyodideHarness,
    World,
)

SECRET = "pyodide-tier-secret-that-is-long-enough-for-hs256"
ADMIN_TOKEN = "pyodide-tier-admin-token-0123456789abcdef"
WorldFactory = Callable[..., World]
# Generous rate limits: tests publish faster than people do.
ROOM_LIMITS = json.dumps({"messages_per_second": 1000, "burst": 1000})


def token(user_id: str, name: str | None = None, *, ttl_s: int = 3600, secret: str = SECRET,
          **claims: Any) -> str:
    """An HS256 token in the format rooms.auth verifies, minted on the host with PyJWT."""
    payload: dict[str, Any] = {"sub": user_id, "exp": int(time.time()) + ttl_s, **claims}
    if name is not None:
        payload["name"] = name
    return jwt.encode(payload, secret, algorithm="HS256")


@pytest.fixture(scope="session")
def harness() -> Iterator[PyodideHarness]:
    src = os.environ.get("ROOMS_PYODIDE_SRC")  # point the tier at another tree (a mutated copy)
    try:
        instance = PyodideHarness(Path(src) if src else None)
    except HarnessUnavailableError as exc:
        if os.environ.get("ROOMS_PYODIDE_REQUIRED"):
            pytest.fail(f"the Pyodide harness is required here: {exc}")
        pytest.skip(f"Pyodide harness not installed: {exc}")
    yield instance
    instance.close()


class Expect:
    """What a test declares it provokes on purpose, so the clean-world check allows it."""

    def __init__(self) -> None:
        self.warnings: list[str] = []  # warning kinds (see harness/lib/diagnostics.mjs)
        self.errors = 0  # exceptions escaping handlers
        self.unexpected_errors = 0  # `unexpected_error` log lines


def log_records(lines: list[str]) -> list[dict[str, Any]]:
    """The JSON log records among the lines the Worker printed."""
    return [json.loads(line) for line in lines if line.startswith("{")]


def check_clean(harness: PyodideHarness, world: World, expect: Expect) -> list[dict[str, Any]]:
    """Fail unless the world is clean; returns the log records."""
    return log_records(_checked_output(harness, world, expect))


def take_output(world: World, expect: Expect) -> list[str]:
    """Every line the Worker printed since the last call (or the test's start).

    What happened so far must be clean as `expect` allows; `expect` then starts over, for what
    the rest of the test provokes.
    """
    lines = _checked_output(world.harness, world, expect)
    expect.warnings, expect.errors, expect.unexpected_errors = [], 0, 0
    return lines


def _checked_output(harness: PyodideHarness, world: World, expect: Expect) -> list[str]:
    diag = harness.take_diagnostics(world)
    logs = log_records(diag["logs"])
    problems: list[str] = []
    for error in diag["errors"][expect.errors:]:
        problems.append(f"exception escaped {error['where']}:\n{error['message']}")
    unexpected = [r for r in logs if r.get("event") == "unexpected_error"]
    if len(unexpected) != expect.unexpected_errors:
        problems.append(f"`unexpected_error` logged {len(unexpected)} times "
                        f"(expected {expect.unexpected_errors}): {unexpected}")
        for failure in diag["failures"]:
            problems.append(f"Python traceback of {failure['handler']}:\n{failure['traceback']}")
    kinds = [w["kind"] for w in diag["warnings"]]
    if sorted(kinds) != sorted(expect.warnings):
        coercions = [f"silent FFI coercions in the fakes (expected {expect.warnings}):"]
        for kind in sorted(set(kinds)):
            examples = [w["message"] for w in diag["warnings"] if w["kind"] == kind]
            coercions.append(f"  {kind} x{len(examples)}, e.g. {examples[0]}")
        problems.append("\n".join(coercions))
    if problems:
        pytest.fail("the Worker did not run cleanly in Pyodide:\n\n" + "\n\n".join(problems),
                    pytrace=False)
    lines: list[str] = diag["logs"]
    return lines


@pytest.fixture
def expect() -> Expect:
    return Expect()


def new_world(harness: PyodideHarness, *, id_has_name: bool = True, **vars_: object) -> World:
    """A world with the tier's secrets and limits over wrangler.jsonc's vars; a var of None is
    unset, one given as a dict reaches the Worker as a JS object (a JSON object in wrangler.jsonc).
    ``id_has_name=False``: `ctx.id.name` is undefined in the objects."""
    config: dict[str, object] = {
        "JWT_SECRET": SECRET,
        "ADMIN_TOKEN": ADMIN_TOKEN,
        "ROOM_LIMITS": ROOM_LIMITS,
    }
    config.update(vars_)
    return harness.world(vars=config, idHasName=id_has_name)


@pytest.fixture
def world(harness: PyodideHarness, expect: Expect) -> Iterator[World]:
    """A fresh deployment whose objects stay awake between events (until evicted)."""
    harness.take_diagnostics()  # drop anything a previous test left behind
    instance = new_world(harness)
    yield instance
    check_clean(harness, instance, expect)


@pytest.fixture(params=[False, True], ids=["awake", "hibernate-every-event"])
def world_any(harness: PyodideHarness, expect: Expect,
              request: pytest.FixtureRequest) -> Iterator[World]:
    """The same, once awake and once evicting every object after every event."""
    harness.take_diagnostics()
    instance = new_world(harness)
    instance.set_hibernate_every_event(request.param)
    yield instance
    check_clean(harness, instance, expect)


@pytest.fixture
def world_factory(harness: PyodideHarness, expect: Expect) -> Iterator[Any]:
    """Make worlds with extra vars (ARCHIVE_POLICY, ...); each is checked clean afterwards."""
    harness.take_diagnostics()
    made: list[World] = []

    def factory(*, id_has_name: bool = True, **vars_: object) -> World:
        instance = new_world(harness, id_has_name=id_has_name, **vars_)
        made.append(instance)
        return instance

    yield factory
    for instance in made:
        check_clean(harness, instance, expect)
