"""What a process holding many sockets asks of the operating system.

Open files: every WebSocket is one, and the usual soft limit (1,024) would refuse connections
long before the machine runs out of anything; the hard limit is what the administrator allows.

Memory: rooms that hibernate free their engine and their SQLite connection, but glibc keeps
freed blocks in the process heap, so the resident size a host pays for stays at its peak. A
burst of wake-ups followed by hours of idle sockets would then cost as much as the burst.
`malloc_trim` returns the free pages; elsewhere (macOS, musl) this is a no-op.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import resource
import sys
from collections.abc import Callable


def raise_open_file_limit() -> tuple[int, int]:
    """Raise this process's open-file limit as far as the hard limit allows: (soft, hard)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1_048_576)
    if soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


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
