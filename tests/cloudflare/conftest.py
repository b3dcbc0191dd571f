"""Install the fake runtime modules, then provide a fake Cloudflare deployment per test.

`js`, `pyodide`, `pyodide.ffi` and `workers` exist only inside workerd (reference §5.12), so the
fakes go into ``sys.modules`` before any test imports `worker` or `objects`. No host package
imports these names, so leaving them installed for the session is harmless.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from tests.cloudflare import fake_js, fake_pyodide, fake_workers


def _install() -> None:
    for name in ("js", "pyodide", "pyodide.ffi", "workers"):
        existing = sys.modules.get(name)
        if existing is not None and not getattr(existing, "__fake__", False):
            raise RuntimeError(f"a real {name!r} module is importable; these tests need the fake")
    js = fake_js.build_module()
    pyodide, ffi = fake_pyodide.build_modules()
    workers = fake_workers.build_module()
    for name, module in (("js", js), ("pyodide", pyodide), ("pyodide.ffi", ffi),
                         ("workers", workers)):
        module.__fake__ = True  # type: ignore[attr-defined]
        sys.modules.setdefault(name, module)


_install()

from objects.room import Room  # noqa: E402  (needs the fakes above)
from tests.cloudflare.runtime import FakeCloudflare  # noqa: E402
from worker import Default  # noqa: E402


def make_cloudflare(**kwargs: Any) -> FakeCloudflare:
    kwargs.setdefault("worker_class", Default)
    kwargs.setdefault("room_class", Room)
    return FakeCloudflare(**kwargs)


def check_clean(cf: FakeCloudflare) -> None:
    """What every test must leave behind: no escaped exception, no dropped event, no coercion."""
    assert cf.escaped == [], f"exceptions escaped a handler: {cf.escaped!r}"
    assert cf.dropped == [], f"events had no handler: {cf.dropped!r}"
    assert fake_js.FFI_WARNINGS == [], f"silent FFI coercions: {fake_js.FFI_WARNINGS!r}"


@pytest.fixture(autouse=True)
def _fresh_ffi_warnings() -> Iterator[None]:
    fake_js.FFI_WARNINGS.clear()
    yield
    fake_js.FFI_WARNINGS.clear()


@pytest.fixture
def cf() -> Iterator[FakeCloudflare]:
    """A deployment whose objects stay awake between events."""
    deployment = make_cloudflare()
    yield deployment
    check_clean(deployment)


@pytest.fixture(params=[False, True], ids=["awake", "hibernate-every-event"])
def cf_any(request: pytest.FixtureRequest) -> Iterator[FakeCloudflare]:
    """The same deployment, once awake and once hibernating after every event."""
    deployment = make_cloudflare(hibernate_every_event=request.param)
    yield deployment
    check_clean(deployment)


def log_records(captured: str) -> list[dict[str, Any]]:
    """The JSON log lines in captured stdout (every line must be JSON)."""
    return [json.loads(line) for line in captured.splitlines() if line.strip()]
