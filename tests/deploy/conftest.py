"""The deploy checks: `wrangler deploy --dry-run` offline, wrangler.jsonc and README's commands.

The dry run bundles exactly what `make deploy` uploads into a temporary --outdir, without network.
It needs the pinned wrangler and Node 24 (`make workerd-setup`); without them those tests are
skipped, unless ROOMS_WORKERD_REQUIRED=1 (`make test`, `make deploy`), which fails them instead.
"""

from __future__ import annotations

import compileall
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import workerd_toolchain
from tests.deploy.project import ROOT
from workerd.wrangler import Toolchain

# The size line of `make test`'s summary, filled in by test_bundle.py.
SUMMARY: list[str] = []


@pytest.fixture(scope="session")
def tools() -> Toolchain:
    return workerd_toolchain()


@dataclass(frozen=True)
class DryRun:
    """What `wrangler deploy --dry-run --outdir` wrote, and what it printed."""

    outdir: Path
    output: str
    files: dict[str, bytes]  # path in the bundle -> content (wrangler's own README.md left out)
    reported_kib: float  # "Total Upload: <size> KiB / gzip: <gzip> KiB"
    reported_gzip_kib: float


@pytest.fixture(scope="session")
def dry_run(tools: Toolchain, tmp_path_factory: pytest.TempPathFactory) -> DryRun:
    # Bytecode in src/, as `make setup` (compileall) leaves it, so that the bundle shows it stays.
    compileall.compile_dir(ROOT / "src", quiet=1)
    outdir = tmp_path_factory.mktemp("bundle")
    result = tools.run("deploy", "--dry-run", "--outdir", str(outdir), check=False)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"wrangler deploy --dry-run failed:\n{output}"
    size = re.search(r"Total Upload: ([\d.]+) KiB / gzip: ([\d.]+) KiB", output)
    assert size is not None, f"no size line in wrangler's output:\n{output}"
    files = {
        path.relative_to(outdir).as_posix(): path.read_bytes()
        for path in sorted(outdir.rglob("*"))
        if path.is_file()
    }
    note = files.pop("README.md", b"")  # wrangler's note about the folder, not uploaded
    assert note.startswith(b"This folder contains the built output assets for the worker")
    return DryRun(outdir, output, files, float(size.group(1)), float(size.group(2)))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for line in SUMMARY:
        terminalreporter.write_line(line)
