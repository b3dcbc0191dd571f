"""The coordinator <-> worker pipe carries results that arrive in pieces, whole."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import pickle
import struct
import threading
import time
from typing import Any

from loadtest.runner import PipeChannel


def _run(coro: Any) -> Any:
    try:  # the generator runs on uvloop when it is installed (it makes watched fds non-blocking)
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def test_a_result_written_in_two_pieces_arrives_whole() -> None:
    ours, theirs = multiprocessing.Pipe()
    big = {"ev": "result", "timeline": [[i, i * 0.5] for i in range(20_000)]}
    payload = pickle.dumps(big)
    framed = struct.pack("!i", len(payload)) + payload  # multiprocessing's own framing

    def slow_worker() -> None:
        # A busy worker process: half the result now, the rest a moment later.
        half = len(framed) // 2
        os.write(theirs.fileno(), framed[:half])
        time.sleep(0.2)
        view = memoryview(framed)[half:]
        while view:
            view = view[os.write(theirs.fileno(), view) :]
        theirs.close()

    async def main() -> list[dict[str, Any]]:
        channel = PipeChannel(ours)
        writer = threading.Thread(target=slow_worker)
        writer.start()
        received = [await asyncio.wait_for(channel.recv(), 10) for _ in range(2)]
        writer.join()
        channel.close()
        return received

    result, end = _run(main())
    assert result == big
    assert end == {"ev": "eof"}  # the worker's end closing is reported, not raised
