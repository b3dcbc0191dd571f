"""What the server asks of the C library: one malloc heap for all its threads (glibc)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from roomsd.config import PROJECT_ROOT

# A thread that allocates gets its own glibc heap unless the arenas are limited: count the
# heaps `malloc_info` reports after a worker thread allocated.
_COUNT_HEAPS = textwrap.dedent(
    """
    import ctypes, ctypes.util, sys, threading
    from roomsd.os_resources import limit_malloc_arenas
    if sys.argv[1] == "limit":
        assert limit_malloc_arenas()
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    libc.malloc.restype = ctypes.c_void_p
    kept = []
    def allocate():
        kept.extend(libc.malloc(4096) for _ in range(64))
    worker = threading.Thread(target=allocate)
    worker.start()
    worker.join()
    libc.open_memstream.restype = ctypes.c_void_p
    buffer, size = ctypes.c_char_p(), ctypes.c_size_t()
    stream = libc.open_memstream(ctypes.byref(buffer), ctypes.byref(size))
    libc.malloc_info(0, ctypes.c_void_p(stream))
    libc.fclose(ctypes.c_void_p(stream))
    print(buffer.value.decode().count("<heap nr="))
    """
)


def _heaps(mode: str) -> int:
    env = {"PYTHONPATH": f"{PROJECT_ROOT / 'src'}:{PROJECT_ROOT / 'local'}"}
    done = subprocess.run(
        [sys.executable, "-c", _COUNT_HEAPS, mode],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=True,
    )
    return int(done.stdout.strip())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_the_server_keeps_one_malloc_heap_for_all_its_threads() -> None:
    assert _heaps("default") >= 2  # the worker thread got a heap of its own
    assert _heaps("limit") == 1
