"""The server sampler's CPU and CPU-wait figures, read from /proc of a real process tree."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time

import pytest

from loadtest.runner import ServerSampler
from tests.conftest import timeout

# Two busy processes, parent and child, allowed on one core only: whenever one runs, the other
# is runnable and waits, so the tree's wait grows with its CPU time whatever else the machine
# runs (other load only adds to the wait).
BUSY_PAIR = "while :; do :; done & while :; do :; done"


@pytest.mark.skipif(shutil.which("taskset") is None, reason="needs taskset (util-linux)")
def test_wait_for_a_cpu_is_summed_over_the_tree() -> None:
    proc = subprocess.Popen(["taskset", "-c", "0", "sh", "-c", BUSY_PAIR], start_new_session=True)
    try:
        sampler = ServerSampler(proc.pid)
        sampler.mark("go")
        deadline = time.monotonic() + timeout(30)
        while True:  # until both have run a while: the sum over the tree includes the child
            time.sleep(0.2)
            sampler.mark("t_end")
            marks = sampler.marks
            if marks["t_end"]["cpu_s"] - marks["go"]["cpu_s"] >= 0.4:
                break
            assert time.monotonic() < deadline, "the busy pair never got 0.4 s of CPU"
        summary = sampler.summary(connected=0, duration_s=1.0)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the pair: its own process group
        proc.wait()
    # One core for two busy processes: while one ran, the other waited, so the wait is at
    # least a sizeable share of the CPU they got (half, with fair scheduling).
    assert summary["cpu_wait_s_sending"] >= 0.1
    assert summary["cpu_s_sending"] >= 0.4
