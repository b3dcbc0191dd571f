"""The probe Worker (tests/workerd/probes/) in the real workerd, once per test session.

It runs under `wrangler dev` with the project's Toolchain and LOCAL_FLAGS, exactly like `make dev`,
but with its own config and its own ``--persist-to`` in a temporary directory. wrangler takes a
Python Worker's vendored packages from ``python_modules/`` beside the config file (its "project
root", the config's directory, not `main`'s), and refuses a python_modules inside the module root
when the two differ. So the session directory gets a copy of the probe config with an absolute
`main` and a hard-linked copy of the project's python_modules next to it; the probe sources stay
where they are (the module root is tests/workerd/probes/src). The experimental `unsafe_module`
flag lets the probes evict an object on demand (probes/src/probe.py, `Default.evict`).

Without `make workerd-setup` the tier is skipped, unless ROOMS_WORKERD_REQUIRED=1 (make test).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import timeout, workerd_toolchain
from workerd.wrangler import (
    PROJECT_ROOT,
    STATE,
    WranglerDev,
    dev_args,
    free_port,
)

PROBES = Path(__file__).resolve().parent / "probes"


def probe_config() -> dict[str, Any]:
    """tests/workerd/probes/wrangler.jsonc as JSON, with `main` made absolute."""
    text = (PROBES / "wrangler.jsonc").read_text()
    config: dict[str, Any] = json.loads(re.sub(r"(?m)^\s*//.*$", "", text))
    config["main"] = str(PROBES / config["main"])
    return config


def link_tree(source: Path, target: Path) -> None:
    """A copy of ``source`` made of hard links (a real copy across file systems).

    A symlink will not do: wrangler walks python_modules with readdir's file types and does not
    follow a symlinked directory.
    """
    try:
        shutil.copytree(source, target, copy_function=os.link)
    except OSError:
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(source, target)


@dataclass
class ProbeWorker:
    """The running probe Worker: HTTP and WebSocket URLs, and JSON from its objects."""

    dev: WranglerDev

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.dev.port}"

    @staticmethod
    def name(prefix: str) -> str:
        """An object name no other test uses (storage lives for the whole session)."""
        return f"{prefix}-{uuid.uuid4().hex[:10]}"

    def get(self, path: str, seconds: float = 30) -> Any:
        url = f"http://{self.host}{path}"
        try:
            with urllib.request.urlopen(url, timeout=timeout(seconds)) as reply:
                return json.loads(reply.read())
        except urllib.error.HTTPError as exc:
            raise AssertionError(f"{path} answered {exc.code}: {exc.read().decode()}") from None

    def probe(self, obj: str, name: str, **query: Any) -> Any:
        qs = "&".join(f"{k}={v}" for k, v in query.items())
        return self.get(f"/do/{obj}/probe/{name}" + (f"?{qs}" if qs else ""))

    def events(self, obj: str, kind: str | None = None) -> list[Any]:
        events: list[Any] = self.get(f"/do/{obj}/events")
        return [data for event, data in events if kind is None or event == kind]

    def wait_events(self, obj: str, kind: str, count: int, seconds: float = 15) -> list[Any]:
        """The object's ``kind`` events once there are ``count`` of them."""
        deadline = time.monotonic() + timeout(seconds)
        while True:
            found = self.events(obj, kind)
            if len(found) >= count or time.monotonic() > deadline:
                return found
            time.sleep(0.1)

    def evict(self, obj: str) -> Any:
        """Evict the object now (`workerd:unsafe`), as workerd does after 10 s idle."""
        return self.get(f"/evict/{obj}")

    def ws_url(self, obj: str, *tags: str, answer: bool = False, greet: bool = False) -> str:
        query = [f"tag={t}" for t in tags] + [f"answer={int(answer)}", f"greet={int(greet)}"]
        return f"ws://{self.host}/do/{obj}/ws?" + "&".join(query)


@pytest.fixture(scope="session")
def probe_worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProbeWorker]:
    tools = workerd_toolchain()
    root = tmp_path_factory.mktemp("probe-worker")
    config = root / "wrangler.json"
    config.write_text(json.dumps(probe_config(), indent=2))
    state = json.loads(STATE.read_text())
    modules = Path(state.get("python_modules", PROJECT_ROOT / "python_modules"))
    link_tree(modules, root / "python_modules")
    # The probe Worker's JS helper, where wrangler bundles .js files as ES modules (probe.py).
    shutil.copy(PROBES / "unsafe_evict.js", root / "python_modules" / "workers")
    port = free_port()
    # Command-line flags replace the configured ones (wrangler.jsonc of the probes says more).
    args = ["--config", str(config), *dev_args(port, root / "state"),
            "--compatibility-flag", "unsafe_module"]
    dev = WranglerDev(tools, args, port, root / "wrangler.log")
    dev.start(ready_timeout_s=timeout(120))
    yield ProbeWorker(dev)
    dev.stop()
