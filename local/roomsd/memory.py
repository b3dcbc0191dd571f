"""Handing freed memory back to the operating system after rooms hibernate.

Rooms that hibernate free their engine and their SQLite connection, but glibc keeps freed
blocks in the process heap, so the resident size a host pays for stays at its peak. A burst
of wake-ups followed by hours of idle sockets would then cost as much as the burst.
`malloc_trim` returns the free pages; elsewhere (macOS, musl) this is a no-op.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
from collections.abc import Callable


def _load_malloc_trim() -> Callable[[int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim: Callable[[int], int] = libc.malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None
    return trim


_MALLOC_TRIM = _load_malloc_trim()


def release_free_memory() -> bool:
    """Return free heap pages to the OS; True if this platform can."""
    if _MALLOC_TRIM is None:
        return False
    _MALLOC_TRIM(0)
    return True
