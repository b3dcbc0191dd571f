"""Shared by the Cloudflare tests: the fake modules' installation and small helpers.

`js`, `pyodide`, `pyodide.ffi` and `workers` exist only inside workerd (docs/cloudflare.md §1.7), so
`install_fakes` puts the fakes into ``sys.modules`` before anything imports `worker` or `objects`
(conftest.py calls it first). No host package imports these names, so they stay installed for
the session.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from tests.cloudflare import fake_js, fake_pyodide, fake_workers


def install_fakes() -> None:
    for name in ("js", "pyodide", "pyodide.ffi", "workers"):
        existing = sys.modules.get(name)
        if existing is not None and not getattr(existing, "__fake__", False):
            raise RuntimeError(f"a real {name!r} module is loaded; these tests need the fake")
    js = fake_js.build_module()
    pyodide, ffi = fake_pyodide.build_modules()
    workers = fake_workers.build_module()
    for name, module in (("js", js), ("pyodide", pyodide), ("pyodide.ffi", ffi),
                         ("workers", workers)):
        setattr(module, "__fake__", True)  # noqa: B010  (a marker on a module object)
        sys.modules.setdefault(name, module)


install_fakes()

from objects.room import Room  # noqa: E402  (needs the fakes above)
from rooms.auth import mint_token  # noqa: E402
from tests.cloudflare.runtime import SECRET, FakeCloudflare  # noqa: E402
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


def token(user_id: str, name: str | None = None, ttl_s: int = 3600) -> str:
    return mint_token(SECRET, user_id, name, ttl_s)


def log_records(captured: str) -> list[dict[str, Any]]:
    """The log lines in captured stdout; every line must be one JSON object."""
    return [json.loads(line) for line in captured.splitlines() if line.strip()]
