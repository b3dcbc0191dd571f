"""`rooms loadtest` as a user meets it first: its help and its answers to bad arguments."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from loadtest import cli
from roomsd.cli import main as rooms_main
from roomsd.config import PROJECT_ROOT
from tests.local.test_process import ENV


def test_help_lists_the_scenarios(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        rooms_main(["loadtest", "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: rooms loadtest")
    for word in ("fanout", "connect-storm", "idle", "reconnect-resume", "--token-command"):
        assert word in out


def test_rooms_help_mentions_loadtest(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        rooms_main(["--help"])
    assert "loadtest" in capsys.readouterr().out


def test_python_dash_m_loadtest_help() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "loadtest", "--help"],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "python -m loadtest" in done.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["storm"], "invalid choice: 'storm'"),
        (["fanout", "--clients", "0"], "--clients must be at least 1"),
        (["fanout", "--rooms", "two"], "expected a whole number, got 'two'"),
        (["fanout", "--rate", "0"], "--rate must be above 0"),
        (["fanout", "--rate", "nan"], "expected a finite number"),
        (["fanout", "--duration", "0"], "--duration must be above 0"),
        (["fanout", "--duration", "100000"], "at most 3600 seconds"),
        (["fanout", "--clients", "2", "--senders", "3"], "--senders cannot exceed --clients"),
        (["fanout", "--url", "http://127.0.0.1:8787"], "must start with ws:// or wss://"),
        (["fanout", "--url", "ws://127.0.0.1:8787/?x=1"], "without a query"),
        (["idle", "--rooms", "400", "--clients", "300"], "at most 100000 connections"),
        (["idle", "--rooms", "2", "--wake-probe", "3"], "--wake-probe must be between"),
        (["fanout", "--room-prefix", "bad/prefix"], "--room-prefix"),
        (["fanout", "--secret", "a", "--token", "b"], "pass only one of"),
        (["fanout", "--secret-env", "ROOMS_TEST_UNSET_VARIABLE"], "environment variable is empty"),
    ],
)
def test_bad_arguments_exit_2_with_a_clear_message(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(args)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert message in err
    assert err.startswith("usage: rooms loadtest")


def test_no_token_source_says_what_to_pass(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("JWT_SECRET", raising=False)
    monkeypatch.setattr(cli, "PROJECT_ROOT", tmp_path)  # no .dev.vars there
    with pytest.raises(SystemExit) as exit_:
        cli.main(["fanout"])
    assert exit_.value.code == 2
    assert "no token source: pass --secret" in capsys.readouterr().err


def test_too_many_connections_for_the_open_file_limit(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(cli, "raise_open_file_limit", lambda: (1024, 1024))
    with pytest.raises(SystemExit) as exit_:
        cli.main(["idle", "--rooms", "100", "--clients", "20", "--secret", "s"])
    assert exit_.value.code == 2
    assert "pass a larger --procs" in capsys.readouterr().err


def test_a_failing_token_command_is_reported(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            *(sys.executable, "-m", "loadtest", "fanout"),
            *("--token-command", "echo nope >&2; exit 3"),
            *("--url", "ws://127.0.0.1:9", "--out", str(tmp_path), "--progress", "none"),
        ],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 1
    assert "--token-command failed (exit 3): nope" in done.stderr


def test_nothing_listening_fails_at_once_and_publishes_nothing(tmp_path: Path) -> None:
    """Refused before any client starts: exit 1, one line saying what to do, no result files
    (which would count publishes that never left)."""
    with socket.create_server(("127.0.0.1", 0)) as closed:
        port = closed.getsockname()[1]  # a port that was free a moment ago: nothing listens
    out = tmp_path / "results"
    done = subprocess.run(
        [
            *(sys.executable, "-m", "loadtest", "fanout", "--secret", "s" * 32),
            *("--url", f"ws://127.0.0.1:{port}", "--out", str(out), "--progress", "none"),
        ],
        env=ENV, capture_output=True, text=True, timeout=60, check=False,
    )
    assert done.returncode == 1
    assert f"nothing answers at ws://127.0.0.1:{port} (Connection refused)" in done.stderr
    assert "make serve" in done.stderr
    assert "published" not in done.stdout
    assert not out.exists()


def test_help_shows_each_default_once(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    out = " ".join(capsys.readouterr().out.split())  # unwrapped
    assert "(default: )" not in out
    assert "(default: None)" not in out
    assert "room names are <prefix><n> (default: lt-<run id>-) --server-pid" in out
    assert "output file stem (default: <scenario>-<run id>) --plot" in out


def test_the_default_output_folder_is_git_ignored() -> None:
    default = cli.build_parser().parse_args(["fanout"]).out
    ignored = subprocess.run(
        ["git", "check-ignore", "--no-index", "-q", str(default / "fanout-1.json")],
        cwd=PROJECT_ROOT, check=False, timeout=30,
    )
    assert ignored.returncode == 0
