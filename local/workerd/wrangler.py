"""Start, wait for and stop `wrangler dev` running the Worker in the real, pinned workerd.

Everything here is local-only. The production `wrangler.jsonc` stays as deployed; the flags that
make workerd run our own Pyodide bundle are given on the command line (`LOCAL_FLAGS`, after the
configured ones, which a command-line flag would otherwise replace), and workerd
itself is started through scripts/workerd/workerd-offline, which tells it where that bundle is.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

PROJECT_ROOT = Path(__file__).resolve().parents[2]
STATE = PROJECT_ROOT / ".cache" / "workerd" / "state.json"

WRANGLER_CONFIG = PROJECT_ROOT / "wrangler.jsonc"

# `python_workers_development` selects the dev bundle (pyodide_dev.capnp.bin), the one workerd
# loads without checking its hash against the released bundles'. The highest Python flag wins, so
# the ones our compatibility date turns on are switched off beside it. `--compatibility-flag` on
# the command line *replaces* wrangler.jsonc's list, so `dev_args` passes that list first.
LOCAL_FLAGS: tuple[str, ...] = (
    "python_workers_development",
    "no_python_workers_314",
    "no_python_workers_20260610",
    "no_python_workers_20250116",
)


def read_jsonc(path: Path) -> Any:
    """A JSONC file (// and /* */ comments, trailing commas) as wrangler reads it."""
    text = path.read_text()
    out: list[str] = []
    i, in_string = 0, False
    while i < len(text):
        char = text[i]
        if in_string:
            out.append(char)
            if char == "\\":
                out.append(text[i + 1])
                i += 1
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
            out.append(char)
        elif text.startswith("//", i):
            i = text.find("\n", i)
            i = len(text) if i < 0 else i
            continue
        elif text.startswith("/*", i):
            i = text.index("*/", i) + 2
            continue
        else:
            out.append(char)
        i += 1
    return json.loads(re.sub(r",(\s*[}\]])", r"\1", "".join(out)))


def wrangler_config() -> dict[str, Any]:
    """The production wrangler.jsonc."""
    config: dict[str, Any] = read_jsonc(WRANGLER_CONFIG)
    return config


class WorkerdNotInstalledError(RuntimeError):
    """`make workerd-setup` has not run on this machine."""


@dataclass(frozen=True)
class Toolchain:
    """Paths written by scripts/setup_workerd.py."""

    node: Path
    wrangler: Path
    workerd: Path

    @classmethod
    def installed(cls) -> Toolchain:
        if not STATE.exists():
            raise WorkerdNotInstalledError(f"{STATE} is missing: run `make workerd-setup`")
        state = json.loads(STATE.read_text())
        tools = cls(Path(state["node"]), Path(state["wrangler"]), Path(state["workerd"]))
        for path in (tools.node, tools.wrangler, tools.workerd):
            if not path.exists():
                raise WorkerdNotInstalledError(f"{path} is missing: run `make workerd-setup`")
        return tools

    def env(self) -> dict[str, str]:
        """The environment for wrangler: Node 24 first on PATH, workerd through our wrapper."""
        return dict(
            os.environ,
            PATH=f"{self.node.parent}{os.pathsep}{os.environ.get('PATH', '')}",
            MINIFLARE_WORKERD_PATH=str(self.workerd),
            WRANGLER_SEND_METRICS="false",
            WRANGLER_LOG_PATH=str(PROJECT_ROOT / ".wrangler" / "logs"),
            CI="1",  # no interactive prompts or hotkeys
        )

    def wrangler_command(self, *args: str) -> list[str]:
        return [str(self.node), str(self.wrangler), *args]

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.wrangler_command(*args),
            cwd=PROJECT_ROOT,
            env=self.env(),
            check=check,
            capture_output=True,
            text=True,
        )


def dev_args(
    port: int,
    persist_to: Path,
    env_file: Path | None = None,
    variables: Mapping[str, str] | None = None,
) -> list[str]:
    """`wrangler dev` arguments for the Worker on 127.0.0.1:``port``, storage in ``persist_to``."""
    args = ["dev", "--ip", "127.0.0.1", "--port", str(port), "--persist-to", str(persist_to)]
    args += ["--inspector-port", str(free_port()), "--show-interactive-dev-session=false"]
    args += ["--live-reload=false"]
    for flag in [*wrangler_config().get("compatibility_flags", []), *LOCAL_FLAGS]:
        args += ["--compatibility-flag", flag]
    if env_file is not None:
        args += ["--env-file", str(env_file)]
    for name, value in (variables or {}).items():
        args += ["--var", f"{name}:{value}"]
    return args


def apply_migrations(tools: Toolchain, persist_to: Path) -> None:
    """The D1 schema of migrations/ in the local D1 that `wrangler dev --persist-to` will use."""
    result = tools.run(
        "d1", "migrations", "apply", "DB", "--local", "--persist-to", str(persist_to), check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"wrangler d1 migrations apply failed:\n{result.stdout}{result.stderr}")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass
class WranglerDev:
    """One `wrangler dev` process group (wrangler, its esbuild and its workerd children)."""

    tools: Toolchain
    args: Sequence[str]
    port: int
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    _log: IO[bytes] | None = field(default=None, repr=False)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, ready_timeout_s: float = 90.0) -> None:
        self._log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            self.tools.wrangler_command(*self.args),
            cwd=PROJECT_ROOT,
            env=self.tools.env(),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # one process group: stop() ends workerd too
        )
        self.wait_ready(ready_timeout_s)

    def wait_ready(self, timeout_s: float) -> None:
        """Until /health answers 200: the Worker and its Python have started."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"wrangler dev exited; see {self.log_path}")
            try:
                with urllib.request.urlopen(f"{self.base_url}/health", timeout=5) as reply:
                    if reply.status == 200:
                        return
            except (OSError, urllib.error.URLError):
                pass
            time.sleep(0.25)
        self.stop()
        raise TimeoutError(
            f"wrangler dev did not answer /health in {timeout_s} s; see {self.log_path}"
        )

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout_s: float = 15.0) -> None:
        """Stop the whole process group; SIGKILL if it does not go in time."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            try:
                os.killpg(process.pid, sig)
                process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            except ProcessLookupError:
                pass
        if process is not None:
            # Children that outlived wrangler (workerd) are in the same group.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
        if self._log is not None:
            self._log.close()
            self._log = None
