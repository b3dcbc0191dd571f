"""`rooms` mistakes a new user makes: each is one line naming the problem and the fix, exit
status 2, before the banner; `rooms --help` shows the serve options; the banner gives the URLs."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rooms.auth import verify_token
from tests.conftest import timeout
from tests.local.conftest import SECRET
from tests.local.test_process import ENV, ROOMS, free_port, processes, start, wait_ready

pytestmark = pytest.mark.integration
__all__ = ["processes"]  # the fixture, used here
BANNER = "durable-rooms on"


@pytest.fixture
def dev_vars(tmp_path: Path) -> Path:
    path = tmp_path / ".dev.vars"
    path.write_text(f'JWT_SECRET="{SECRET}"\n')
    return path


def rooms(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*ROOMS, *args], env=ENV, capture_output=True, text=True,
                          timeout=timeout(30))


def refused_in_one_line(result: subprocess.CompletedProcess[str], *words: str) -> str:
    assert result.returncode == 2, result
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert BANNER not in result.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def test_a_port_in_use_is_one_line_before_the_banner(dev_vars: Path, tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        result = rooms("--dev-vars", str(dev_vars), "serve", "--port", str(port),
                       "--data-dir", str(tmp_path / "data"))
    refused_in_one_line(result, f"port {port}", "already in use", "--port")


@pytest.mark.parametrize("port", ["99999", "-1", "http"])
def test_a_port_out_of_range_is_a_usage_error(dev_vars: Path, port: str) -> None:
    result = rooms("--dev-vars", str(dev_vars), "serve", "--port", port)
    refused_in_one_line(result, "--port", "--help")


def test_a_data_dir_that_cannot_be_made_is_named(dev_vars: Path, tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    data = tmp_path / "a-file" / "data"
    result = rooms("--dev-vars", str(dev_vars), "serve", "--port", str(free_port()),
                   "--data-dir", str(data))
    refused_in_one_line(result, str(data), "--data-dir")


def test_a_database_that_cannot_be_opened_names_the_data_dir(
    dev_vars: Path, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    (data / "d1.sqlite").mkdir(parents=True)  # SQLite cannot open a directory
    result = rooms("--dev-vars", str(dev_vars), "serve", "--port", str(free_port()),
                   "--data-dir", str(data))
    refused_in_one_line(result, str(data), "unable to open database file", "--data-dir")


def test_help_lists_the_serve_and_token_options() -> None:
    result = rooms("--help")
    assert result.returncode == 0
    for option in ("--port", "--data-dir", "--hibernate-every-event", "--log-messages",
                   "--ttl", "--dev-vars", "loadtest"):
        assert option in result.stdout, option


def test_token_refuses_a_secrets_file_that_does_not_exist(tmp_path: Path) -> None:
    missing = tmp_path / "typo.vars"
    result = rooms("--dev-vars", str(missing), "token", "x")
    refused_in_one_line(result, str(missing), "serve")
    assert not missing.exists()
    assert result.stdout == ""  # no token the server would reject


def test_token_uses_the_secret_the_server_uses(dev_vars: Path, tmp_path: Path) -> None:
    """The environment wins over the file for the server (vars_from): so it does for tokens."""
    env_secret = "an-environment-secret-0123456789abcdef"
    minted = subprocess.run([*ROOMS, "--dev-vars", str(dev_vars), "token", "ann"],
                            env={**ENV, "JWT_SECRET": env_secret}, capture_output=True,
                            text=True, timeout=timeout(30), check=True)
    assert verify_token(minted.stdout.strip(), env_secret).user_id == "ann"


def test_the_banner_names_the_chat_page_and_the_admin_api(
    dev_vars: Path, tmp_path: Path
) -> None:
    port = free_port()
    log = tmp_path / "log"
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            [*ROOMS, "--dev-vars", str(dev_vars), "serve", "--port", str(port),
             "--data-dir", str(tmp_path / "data")],
            env=ENV, stdout=sink, stderr=sink,
        )
    try:
        for _ in range(int(timeout(30) / 0.1)):
            if "admin API" in log.read_text() or proc.poll() is not None:
                break
            time.sleep(0.1)
        text = log.read_text()
    finally:
        proc.terminate()
        proc.wait(timeout(10))
    assert f"chat page: http://127.0.0.1:{port}/#room=lobby" in text
    assert f"admin API: http://127.0.0.1:{port}/admin/rooms" in text
    assert f"admin console: http://127.0.0.1:{port}/console/" in text
    assert "docs/admin.md" in text


async def test_the_readme_websocket_client_talks_to_a_room(
    dev_vars: Path, tmp_path: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    """README: `python -m websockets "ws://.../rooms/lobby/ws?since=0&token=$(./rooms token alice)"`
    then a typed publish frame: the room answers with its welcome, the ack and the message."""
    port = free_port()
    processes.append(start(dev_vars, tmp_path / "data", port, tmp_path / "log"))
    await wait_ready(port)
    token = (await asyncio.to_thread(rooms, "--dev-vars", str(dev_vars), "token", "alice"))
    client = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "websockets",
        f"ws://127.0.0.1:{port}/rooms/lobby/ws?since=0&token={token.stdout.strip()}",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )
    stdin, stdout = client.stdin, client.stdout
    assert stdin is not None
    assert stdout is not None
    seen: list[str] = []

    async def until(kind: str) -> None:
        while f'{{"type":"{kind}"' not in "".join(seen):
            line = await asyncio.wait_for(stdout.readline(), timeout(15))
            assert line, "".join(seen)
            seen.append(line.decode())

    await until("welcome")
    stdin.write(b'{"type":"publish","id":"m1","body":"hello from a terminal"}\n')
    await until("message")
    assert '{"type":"ack","id":"m1","seq":1' in "".join(seen)
    stdin.close()
    await asyncio.wait_for(client.wait(), timeout(15))
