"""What a process holding many sockets asks of the operating system.

Open files: every WebSocket is one, and the usual soft limit (1,024) would refuse connections
long before the machine runs out of anything; the hard limit is what the administrator allows.

Memory: rooms that hibernate free their engine and their SQLite connection, but glibc keeps
freed blocks in the process heap, so the resident size a host pays for stays at its peak. A
burst of wake-ups followed by hours of idle sockets would then cost as much as the burst.
`malloc_trim` returns the free pages; elsewhere (macOS, musl) this is a no-op. glibc also
gives every thread that allocates its own heap (arena); the worker threads that open, create and
close room files would each keep one, with freed blocks of SQLite connections scattered over
them, so the server keeps to one (`limit_malloc_arenas`).
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
_M_ARENA_MAX = -8  # glibc's malloc.h


def limit_malloc_arenas() -> bool:
    """One malloc heap for every thread of this process (call it before threads start); True
    if this platform has the setting (glibc). In 200 rooms x 10 connections with every room's
    database opened and closed by worker threads: 1.7-3.2 KiB less per connection (three runs
    of each, BENCHMARKS.md); the few worker threads seldom allocate at the same moment, so the
    one heap's lock costs nothing measurable."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt: Callable[[int, int], int] = libc.mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    return bool(mallopt(_M_ARENA_MAX, 1))


def release_free_memory() -> bool:
    """Return free heap pages to the OS; True if this platform can."""
    if _MALLOC_TRIM is None:
        return False
    _MALLOC_TRIM(0)
    return True
