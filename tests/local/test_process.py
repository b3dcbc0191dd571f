"""The `rooms` command as a user runs it: a real process, killed without warning."""

from __future__ import annotations

import asyncio
import json
import os
import resource
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import websockets

from rooms.auth import mint_token, verify_token
from roomsd.config import PROJECT_ROOT, read_dev_vars
from tests.conftest import timeout
from tests.local.conftest import SECRET, recv_until

pytestmark = pytest.mark.integration

ROOMS = [sys.executable, "-m", "roomsd"]
ENV = {**os.environ, "PYTHONPATH": f"{PROJECT_ROOT / 'src'}:{PROJECT_ROOT / 'local'}"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def dev_vars(tmp_path: Path) -> Path:
    path = tmp_path / ".dev.vars"
    path.write_text(f'JWT_SECRET="{SECRET}"\nROOM_LIMITS={{"burst": 500}}\n')
    return path


def start(dev_vars: Path, data_dir: Path, port: int, log: Path,
          *extra: str, open_files: int | None = None) -> subprocess.Popen[bytes]:
    """``open_files``: start under that soft limit on open files (the hard one unchanged)."""

    def limit_open_files() -> None:
        if open_files is not None:
            _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            resource.setrlimit(resource.RLIMIT_NOFILE, (open_files, hard))

    with log.open("ab") as sink:  # a file, not a pipe: a full pipe would stall the server
        return subprocess.Popen(
            [*ROOMS, "--dev-vars", str(dev_vars), "serve", "--port", str(port),
             "--data-dir", str(data_dir), *extra],
            env=ENV, stdout=sink, stderr=sink, preexec_fn=limit_open_files,
        )


async def wait_ready(port: int) -> None:
    for _ in range(200):
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            await asyncio.sleep(0.05)
    raise AssertionError("server did not start")


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


async def test_sigkill_loses_no_acknowledged_message(
    tmp_path: Path, dev_vars: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    """Every acked message is there after kill -9 and a restart, and seq continues."""
    port = free_port()
    processes.append(
        start(dev_vars, tmp_path / "data", port, tmp_path / "server.log", "--log-messages")
    )
    await wait_ready(port)
    token = mint_token(SECRET, "alice")
    url = f"ws://127.0.0.1:{port}/rooms/crash/ws?token={token}"
    acked = []
    async with websockets.connect(url + "&since=0") as ws:
        await recv_until(ws, "welcome")
        for i in range(50):
            await ws.send(json.dumps({"type": "publish", "id": f"m{i}", "body": f"body {i}"}))
            acked.append((await recv_until(ws, "ack"))["seq"])
        processes[0].send_signal(signal.SIGKILL)
        processes[0].wait(timeout(10))
    assert acked == list(range(1, 51))
    processes.append(start(dev_vars, tmp_path / "data", port, tmp_path / "restart.log"))
    await wait_ready(port)
    async with websockets.connect(url + "&since=0", max_queue=None) as ws:
        welcome = await recv_until(ws, "welcome")
        assert welcome["head"] == 50
        bodies = [(await recv_until(ws, "message"))["body"] for _ in range(50)]
        assert bodies == [f"body {i}" for i in range(50)]
        await ws.send(json.dumps({"type": "publish", "id": "after", "body": "after"}))
        assert (await recv_until(ws, "ack"))["seq"] == 51
    logs = (tmp_path / "server.log").read_bytes()
    assert logs.count(b'"event":"publish"') == 50  # --log-messages: a line per message
    assert token.encode() not in logs
    assert b"body 1" not in logs
    restart_logs = (tmp_path / "restart.log").read_bytes()
    assert b'"event":"connect"' in restart_logs
    assert b'"event":"publish"' not in restart_logs  # the default: connections, not messages


def test_cli_help_and_token(dev_vars: Path) -> None:
    """`rooms --help` documents the commands; `rooms token` mints a token the server accepts."""
    helped = subprocess.run([*ROOMS, "--help"], env=ENV, capture_output=True, text=True,
                            check=True)
    assert "serve" in helped.stdout
    assert "token" in helped.stdout
    minted = subprocess.run([*ROOMS, "--dev-vars", str(dev_vars), "token", "bob", "--name", "Bob"],
                            env=ENV, capture_output=True, text=True, check=True)
    identity = verify_token(minted.stdout.strip(), SECRET)
    assert (identity.user_id, identity.name) == ("bob", "Bob")


@pytest.mark.parametrize(
    ("value", "complaint"),
    [("-1", "must be 0 or more, got -1"), ("lots", "expected a whole number, got 'lots'")],
)
def test_bad_open_idle_databases_is_refused_clearly(
    dev_vars: Path, value: str, complaint: str
) -> None:
    refused = subprocess.run(
        [*ROOMS, "--dev-vars", str(dev_vars), "serve", "--open-idle-databases", value],
        env=ENV, capture_output=True, text=True, timeout=30,
    )
    assert refused.returncode == 2
    assert f"--open-idle-databases: {complaint}" in refused.stderr
    assert "Traceback" not in refused.stderr


def test_invalid_limits_fail_at_start_up(tmp_path: Path) -> None:
    """A bad ROOM_LIMITS stops the server before it listens, naming the problem."""
    dev_vars = tmp_path / ".dev.vars"
    dev_vars.write_text(f'JWT_SECRET="{SECRET}"\nROOM_LIMITS={{"max_frame_bytes": 10}}\n')
    result = subprocess.run(
        [*ROOMS, "--dev-vars", str(dev_vars), "serve", "--port", str(free_port()),
         "--data-dir", str(tmp_path / "d")],
        env=ENV, capture_output=True, text=True, timeout=timeout(30),
    )
    assert result.returncode == 2
    assert "ROOM_LIMITS is invalid" in result.stderr
    assert "max_frame_bytes" in result.stderr


async def test_killed_between_r2_put_and_d1_write_recovers_without_loss_or_duplicate(
    tmp_path: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    """The process dies right after the segment reaches R2; after a restart the persisted
    alarm fires again and the same range is indexed exactly once."""
    dev_vars = tmp_path / ".dev.vars"
    dev_vars.write_text(f'JWT_SECRET="{SECRET}"\nROOM_LIMITS={{"burst": 500}}\n'
                        'ARCHIVE_POLICY={"interval_ms": 300, "retain_messages": 0}\n')
    data, log_path, port = tmp_path / "data", tmp_path / "server.log", free_port()
    crashing = start(dev_vars, data, port, log_path, "--fault", "crash-after-r2-put")
    processes.append(crashing)
    await wait_ready(port)
    url = f"ws://127.0.0.1:{port}/rooms/vault/ws?token={mint_token(SECRET, 'alice')}&since=0"
    async with websockets.connect(url) as ws:
        await recv_until(ws, "welcome")
        for i in range(7):
            await ws.send(json.dumps({"type": "publish", "id": f"m{i}", "body": f"body {i}"}))
            await recv_until(ws, "ack")
        assert await asyncio.to_thread(crashing.wait, timeout(10)) == 70
    segment_files = sorted(p.name for p in (data / "r2").rglob("*.ndjson.gz"))
    assert segment_files == ["000000000001-000000000007.ndjson.gz"]
    processes.append(start(dev_vars, data, port, log_path))
    await wait_ready(port)
    d1 = data / "d1.sqlite"
    for _ in range(100):  # the stored alarm fires again right after start-up
        rows = await asyncio.to_thread(_segments, d1)
        if rows:
            break
        await asyncio.sleep(0.05)
    assert rows == [(1, 7, 7)]
    async with websockets.connect(url, max_queue=None) as ws:  # served from R2 (retain 0)
        welcome = await recv_until(ws, "welcome")
        assert welcome["resume"]["complete"] is True
        bodies = [(await recv_until(ws, "message"))["body"] for _ in range(7)]
    assert bodies == [f"body {i}" for i in range(7)]
    assert sorted(p.name for p in (data / "r2").rglob("*.ndjson.gz")) == segment_files


def _segments(path: Path) -> list[tuple[int, int, int]]:
    import sqlite3

    db = sqlite3.connect(path)
    try:
        return db.execute("SELECT first_seq, last_seq, count FROM segments").fetchall()
    except sqlite3.OperationalError:
        return []
    finally:
        db.close()


async def test_serve_raises_its_open_file_limit(
    tmp_path: Path, dev_vars: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    """Started under the common soft limit of 1,024 files, the server lifts it to the hard one."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard <= 1024:
        pytest.skip(f"the hard limit here is {hard}: nothing to raise")
    port = free_port()
    log = tmp_path / "server.log"
    processes.append(start(dev_vars, tmp_path / "data", port, log, open_files=1024))
    await wait_ready(port)
    soft_now, _ = resource.prlimit(processes[-1].pid, resource.RLIMIT_NOFILE)
    assert soft_now > 1024
    assert f"up to {soft_now:,} open files" in log.read_text()


@pytest.mark.parametrize(
    ("lines", "complaint"),
    [
        ("JWT_SECRET=short\n", "JWT_SECRET must be at least 32 bytes"),
        (f'JWT_SECRET="{SECRET}"\nADMIN_TOKEN=letmein\n', "ADMIN_TOKEN must be at least 32"),
    ],
)
def test_weak_secrets_stop_the_server_before_it_listens(
    tmp_path: Path, lines: str, complaint: str
) -> None:
    dev_vars = tmp_path / ".dev.vars"
    dev_vars.write_text(lines)
    result = subprocess.run(
        [*ROOMS, "--dev-vars", str(dev_vars), "serve", "--port", str(free_port()),
         "--data-dir", str(tmp_path / "d")],
        env=ENV, capture_output=True, text=True, timeout=timeout(30),
    )
    assert result.returncode == 2
    assert complaint in result.stderr
    assert "short" not in result.stderr  # never the value
    assert "letmein" not in result.stderr
    assert "Traceback" not in result.stderr


def mint_with(dev_vars: Path) -> None:
    subprocess.run([*ROOMS, "--dev-vars", str(dev_vars), "token", "ann"], env=ENV, check=True,
                   capture_output=True, timeout=timeout(30))


async def test_secrets_and_data_are_this_users_alone(
    tmp_path: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    """A new .dev.vars is 0600 (a last line without newline is not joined); data is 0600/0700."""
    dev_vars, port = tmp_path / ".dev.vars", free_port()  # created by the server's first run
    processes.append(start(dev_vars, tmp_path / "first", port, tmp_path / "first.log"))
    await wait_ready(port)
    assert dev_vars.stat().st_mode & 0o777 == 0o600
    unterminated = tmp_path / "unterminated.vars"
    unterminated.write_text(f'JWT_SECRET="{SECRET}"')  # no newline at the end
    await asyncio.to_thread(mint_with, unterminated)
    data, port = tmp_path / "data", free_port()
    processes.append(start(unterminated, data, port, tmp_path / "log"))
    await wait_ready(port)
    assert read_dev_vars(unterminated)["JWT_SECRET"] == SECRET  # the line was not joined
    assert len(read_dev_vars(unterminated)["ADMIN_TOKEN"]) >= 32
    created = [data, *data.rglob("*")]
    assert len(created) > 3
    for path in created:
        expected = 0o700 if path.is_dir() else 0o600
        assert path.stat().st_mode & 0o777 == expected, path
