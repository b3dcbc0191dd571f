"""Behaviours that deliberate mistakes in src/objects/ used to break without any test noticing.

Each test names the mistake ("mutant") it catches; scripts/mutants.py applies each one to a copy
of the tree and checks that this tier fails (issue 15, item 5). What the fakes do here follows
what the real workerd was measured to do (tests/workerd/test_probes.py): a time in the past given
to setAlarm becomes "now", a socket the object closed stays listed by getWebSockets() as CLOSING
until its client answers, and `databaseSize` through the SDK's wrapper keeps its first value.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
import time
from pathlib import Path

from rooms.archive import ArchivePolicy
from rooms.segments import segment_key
from tests.pyodide.conftest import ADMIN_TOKEN, Expect, log_records, take_output, token
from tests.pyodide.harness_client import Client, World

ADMIN = {"authorization": f"Bearer {ADMIN_TOKEN}"}
POLICY = ArchivePolicy()  # the defaults: archive 30 s after a write, retry at most every 5 min
SLACK_MS = 5_000


def now_ms() -> int:
    return int(time.time() * 1000)


def join(world: World, user: str, name: str | None = None) -> Client:
    client = world.connect("lobby", token(user, name))
    client.take()
    return client


def inspect(world: World) -> dict[str, object]:
    reply = world.fetch("/admin/rooms/lobby", headers=ADMIN)
    assert reply.status == 200, reply.body
    view: dict[str, object] = reply.json()
    return view


def test_the_archive_alarm_is_set_in_milliseconds(world: World) -> None:
    """Mutant: setAlarm given seconds. workerd runs a time in 1970 at once, every write."""
    alice = join(world, "alice")
    before = now_ms()
    alice.publish("m1", "hello")
    after = now_ms()
    alarm = world.info("lobby")["alarm"]
    assert alarm is not None
    assert before + POLICY.interval_ms - SLACK_MS <= alarm <= after + POLICY.interval_ms + SLACK_MS


def test_an_alarm_that_fails_unexpectedly_schedules_its_own_retry(
    world_any: World, expect: Expect
) -> None:
    """Mutants: `getAlarm` not awaited in `Room._retry_alarm`; no retry alarm after a failed run.

    A storage failure (SQLITE_FULL) inside the alarm is a bug-class error that the archiver does
    not turn into a backoff: the handler logs it (one line, without the error's message) and
    sets the alarm again itself, at most `retry_max_ms` later, or a quiet room would never
    archive again.
    """
    world = world_any
    alice = join(world, "alice")
    alice.publish("m1", "kept")
    world.fail_sql("lobby", "INSERT INTO room_meta", message="secret detail: SQLITE_FULL")
    take_output(world, expect)
    before = now_ms()
    failed = world.alarm("lobby")
    after = now_ms()
    expect.unexpected_errors = 1
    output = take_output(world, expect)
    assert "secret detail" not in "\n".join(output)
    assert [r for r in log_records(output) if r["event"] == "unexpected_error"] == [
        {"event": "unexpected_error", "handler": "alarm", "error": "JsException",
         "room": "lobby"}]
    assert failed["ran"] is True
    assert failed["error"] is None  # caught and logged by the handler, not thrown
    assert failed["next"] is not None, "no alarm is left to retry the archive"
    assert before + POLICY.retry_max_ms - SLACK_MS <= failed["next"]
    assert failed["next"] <= after + POLICY.retry_max_ms + SLACK_MS
    assert world.r2() == []
    retried = world.alarm("lobby")
    assert retried["error"] is None
    assert [o["key"] for o in world.r2()] == [segment_key("lobby", 1, 1)]


def test_a_socket_closed_after_a_failure_is_no_member_while_its_client_answers(
    world: World, expect: Expect
) -> None:
    """Mutant: CLOSING sockets counted as open (`platform.counts_as_open`).

    A handler that fails closes its socket with 1011 without marking the attachment. Until the
    client's answer arrives, getWebSockets() still lists that socket as CLOSING (as workerd does),
    and a room rebuilt meanwhile must not count its user as present.
    """
    alice, bob = join(world, "alice"), join(world, "bob")
    bob.hold_closes()
    world.evict("lobby")
    world.fail_sql("lobby", "FROM sqlite_master")  # rebuilding the room fails
    bob.publish("b1", "lost")
    expect.unexpected_errors = 1
    assert bob.state()["serverReadyState"] == 2  # closed by the room, not answered yet
    assert bob.closes == [(1011, "internal error")]
    listed = [s for s in world.info("lobby")["sockets"] if s["listed"]]
    assert sorted(s["ready_state"] for s in listed) == [1, 2]  # alice OPEN, bob CLOSING
    carol = world.connect("lobby", token("carol"))
    (welcome,) = carol.frames("welcome")
    assert [m["user_id"] for m in welcome["presence"]] == ["alice", "carol"]
    members = inspect(world)["members"]
    assert [m["user_id"] for m in members] == ["alice", "carol"]  # type: ignore[attr-defined]
    bob.answer_close()
    leaves = [p for p in alice.frames("presence") if p["event"] == "leave"]
    assert [p["member"]["user_id"] for p in leaves] == ["bob"]


def test_storage_bytes_are_read_afresh(world: World) -> None:
    """Mutant: `databaseSize` read through the SDK's wrapper, which caches its first value."""
    alice = join(world, "alice")
    alice.publish("m0", "small")
    first = inspect(world)["storage_bytes"]
    for i in range(1, 60):
        alice.publish(f"m{i}", json.dumps(["x" * 1000, i]))
    assert alice.seqs()[-1] == 60
    second = inspect(world)["storage_bytes"]
    assert isinstance(first, int)
    assert isinstance(second, int)
    assert second > first


def test_every_mutant_still_applies_to_src(tmp_path: Path) -> None:
    """scripts/mutants.py must keep up with src/: each mutant changes a copy of it."""
    root = Path(__file__).resolve().parents[2]
    spec = importlib.util.spec_from_file_location("mutants", root / "scripts" / "mutants.py")
    assert spec is not None
    assert spec.loader is not None
    mutants = importlib.util.module_from_spec(spec)
    sys.modules["mutants"] = mutants  # dataclasses look their module up
    try:
        spec.loader.exec_module(mutants)
        for mutant in mutants.MUTANTS:
            copy = tmp_path / mutant.name
            shutil.copytree(root / "src", copy, ignore=shutil.ignore_patterns("__pycache__"))
            before = {p: p.read_text() for p in copy.rglob("*.py")}
            mutants.apply(mutant, copy)
            changed = [p for p, text in before.items() if p.read_text() != text]
            assert changed, mutant.name
    finally:
        del sys.modules["mutants"]
