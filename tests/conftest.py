"""Shared fixtures. Timeouts scale with ROOMS_TESTS_TIMEOUT_FACTOR on slow machines."""

from __future__ import annotations

import os

import pytest

from workerd.wrangler import Toolchain, WorkerdNotInstalledError

TIMEOUT_FACTOR = float(os.environ.get("ROOMS_TESTS_TIMEOUT_FACTOR", "1"))


def timeout(seconds: float) -> float:
    return seconds * TIMEOUT_FACTOR


def workerd_toolchain() -> Toolchain:
    """The tools `make workerd-setup` installs. Without them a test is skipped, unless
    ROOMS_WORKERD_REQUIRED=1 (`make test`, `make deploy`), which fails it instead."""
    try:
        return Toolchain.installed()
    except WorkerdNotInstalledError as exc:
        if os.environ.get("ROOMS_WORKERD_REQUIRED") == "1":
            pytest.fail(f"workerd tools are required here (ROOMS_WORKERD_REQUIRED=1): {exc}")
        pytest.skip(f"workerd tools not installed: {exc}")
