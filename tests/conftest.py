"""Shared fixtures. Timeouts scale with ROOMS_TESTS_TIMEOUT_FACTOR on slow machines."""

from __future__ import annotations

import os

TIMEOUT_FACTOR = float(os.environ.get("ROOMS_TESTS_TIMEOUT_FACTOR", "1"))


def timeout(seconds: float) -> float:
    return seconds * TIMEOUT_FACTOR
