"""Archiving to R2 + D1 and reading back, with real SQLite and a directory bucket."""

from __future__ import annotations

from pathlib import Path

import pytest

from rooms.archive import ArchivePolicy
from rooms.limits import Limits
from rooms.segments import decode_segment, encode_segment, segment_key
from tests.core.harness import RoomHarness, archive_bindings, run

POLICY = ArchivePolicy(interval_ms=1000, threshold=1000, max_segment=4, retain_messages=3)


@pytest.fixture(params=[False, True], ids=["awake", "hibernate-every-event"])
def archived_room(request: pytest.FixtureRequest, tmp_path: Path) -> RoomHarness:
    bindings, _ = archive_bindings(tmp_path, POLICY)
    return RoomHarness(Limits(burst=1000), hibernate_every_event=request.param,
                       archive=bindings)


def publish(room: RoomHarness, count: int, user: str = "alice") -> None:
    client = room.join(user)
    for i in range(count):
        client.publish(f"{user}{i}", f"message {i}")
    client.leave()


def segments(room: RoomHarness) -> list[tuple[int, int]]:
    assert room.archive is not None
    rows = run(room.archive.index.segments("lobby"))
    return [(int(r["first_seq"] or 0), int(r["last_seq"] or 0)) for r in rows]


def test_first_write_sets_the_alarm_and_the_alarm_archives_in_segments(
    archived_room: RoomHarness,
) -> None:
    """A publish schedules the archive; the alarm writes consecutive segments and the index."""
    room = archived_room
    publish(room, 10)
    assert room.alarm.history == [room.now_ms + POLICY.interval_ms]
    outcome = run(room.host.alarm())
    assert outcome is not None
    assert outcome.error is None
    assert segments(room) == [(1, 4), (5, 8), (9, 10)]
    assert room.host.engine.store.archived == 10
    assert room.archive is not None
    data = run(room.archive.bucket.get(segment_key("lobby", 5, 8)))
    assert data is not None
    assert [m.body for m in decode_segment(data, "lobby", 5, 8)] == [f"message {i}" for i in
                                                                       range(4, 8)]
    rooms = run(room.archive.index.db.all("SELECT name, head_seq, archived_seq FROM rooms"))
    assert [dict(r) for r in rooms] == [{"name": "lobby", "head_seq": 10, "archived_seq": 10}]


def test_pruning_keeps_only_the_retention_window_and_only_archived_rows(
    archived_room: RoomHarness,
) -> None:
    """After archiving, rows beyond the newest `retain_messages` are gone from the room."""
    room = archived_room
    publish(room, 10)
    run(room.host.alarm())
    store = room.host.engine.store
    assert [m.seq for m in store.after(0, 100)] == [8, 9, 10]


@pytest.mark.parametrize("fault", ["r2", "d1"])
def test_a_failed_step_is_retried_with_the_same_range_and_no_duplicate(
    tmp_path: Path, fault: str
) -> None:
    """R2 or D1 failing mid-way: the retry reuses the pending range, and nothing is doubled."""
    bindings, faults = archive_bindings(tmp_path, POLICY)
    room = RoomHarness(Limits(burst=1000), archive=bindings)
    publish(room, 6)
    if fault == "r2":
        faults.r2_put_failures = 1
    else:
        faults.d1_write_failures = 1
    first = run(room.host.alarm())
    assert first is not None
    assert first.error is not None
    assert room.host.engine.store.archived == 0
    assert room.host.engine.store.pending_segment() == (1, 4)
    assert room.alarm.at_ms == room.now_ms + POLICY.retry_base_ms  # backoff after a failure
    publish(room, 3, user="bob")  # more arrive meanwhile: the pending range must not grow
    second = run(room.host.alarm())
    assert second is not None
    assert second.error is None
    assert segments(room) == [(1, 4), (5, 8), (9, 9)]
    assert sorted(bindings.bucket.bucket.list()) == [  # type: ignore[attr-defined]
        segment_key("lobby", 1, 4), segment_key("lobby", 5, 8), segment_key("lobby", 9, 9)]


def test_backoff_doubles_up_to_the_cap() -> None:
    """Retry delays grow exponentially and stop at retry_max_ms."""
    policy = ArchivePolicy(retry_base_ms=100, retry_max_ms=1000)
    assert [policy.retry_delay_ms(n) for n in range(1, 7)] == [100, 200, 400, 800, 1000, 1000]


def test_resume_from_zero_reads_pruned_messages_back_from_the_archive(
    archived_room: RoomHarness,
) -> None:
    """A client cannot tell archived from retained: since=0 replays 1..head in order."""
    room = archived_room
    publish(room, 10)
    run(room.host.alarm())
    reader = room.join("reader", since=0)
    welcome = reader.ws.frames("welcome")[0]
    assert welcome["resume"] == {"since": 0, "complete": True, "missing": [], "reason": None}
    assert reader.seqs() == list(range(1, 11))
    assert [m["body"] for m in reader.ws.frames("message")] == [f"message {i}" for i in range(10)]


def test_history_pages_across_the_archive_boundary(archived_room: RoomHarness) -> None:
    """Paging back from the head crosses from retained rows into R2 without a seam."""
    room = archived_room
    publish(room, 10)
    run(room.host.alarm())
    reader = room.join("reader")
    reader.take()
    seen: list[int] = []
    before = None
    while True:
        request = {"type": "history", "limit": 4} | ({"before": before} if before else {})
        reader.send(request)
        page = reader.take("history")[0]
        assert page["missing"] == []
        seen = [m["seq"] for m in page["messages"]] + seen
        before = page["next_before"]
        if before is None:
            break
    assert seen == list(range(1, 11))


def test_an_unreachable_archive_is_named_as_missing_never_skipped(tmp_path: Path) -> None:
    """When a segment cannot be read, the welcome lists the range instead of a silent hole."""
    bindings, _ = archive_bindings(tmp_path, POLICY)
    room = RoomHarness(Limits(burst=1000), archive=bindings)
    publish(room, 10)
    run(room.host.alarm())
    (tmp_path / "r2" / segment_key("lobby", 5, 8)).unlink()
    reader = room.join("reader", since=0)
    resume = reader.ws.frames("welcome")[0]["resume"]
    assert resume["complete"] is False
    assert resume["missing"] == [[5, 7]]  # 8 is still retained in the room
    assert reader.seqs() == [1, 2, 3, 4, 8, 9, 10]


def test_segments_are_deterministic_and_validated() -> None:
    """The same messages give the same bytes; a segment under the wrong range is refused."""
    from rooms.protocol import Message
    from rooms.segments import SegmentError

    messages = [Message(seq=s, id=str(s), user_id="u", name="U", body="b", sent_ms=1)
                for s in (3, 4)]
    assert encode_segment("r", messages) == encode_segment("r", messages)
    with pytest.raises(SegmentError):
        decode_segment(encode_segment("r", messages), "r", 3, 5)
    with pytest.raises(ValueError, match="consecutive"):
        encode_segment("r", [messages[1], messages[0]])


def test_without_an_archive_a_room_keeps_its_retention_window_and_no_more() -> None:
    """No D1/R2: nothing is ever archived, so the room prunes itself to `retain_messages` rows
    (every PRUNE_EVERY messages) and drops dedupe keys past their window; a resume from 0
    names the rest as not retained."""
    from rooms.host import PRUNE_EVERY

    room = RoomHarness(
        Limits(burst=10_000, messages_per_second=10_000),
        retention=ArchivePolicy(retain_messages=50, dedupe_window_ms=60_000),
    )
    writer = room.join("writer")
    store = room.host.engine.store
    for i in range(250):
        writer.publish(f"m{i}", f"body {i}")
        room.tick(1_000)
        if store.head == 2 * PRUNE_EVERY:  # just pruned
            assert store.retained_count() == 50
            assert store.dedupe_count() <= 61  # one key a second, a minute's window
    assert store.retained_count() == 50 + 250 - 2 * PRUNE_EVERY
    reader = room.join("reader", since=0)
    welcome = reader.take("welcome")[0]
    assert welcome["resume"]["reason"] == "not_retained"
    [[first, last]] = welcome["resume"]["missing"]
    assert first == 1
    assert reader.seqs() == list(range(last + 1, 251))


# ------------------------------------------------------------------ deletes and the archive


def segment_bytes(room: RoomHarness, first: int, last: int) -> bytes:
    import gzip

    assert room.archive is not None
    data = run(room.archive.bucket.get(segment_key("lobby", first, last)))
    assert data is not None
    return gzip.decompress(data)


def archived_with_secrets(room: RoomHarness) -> None:
    """Ten messages, message 6 edited twice, all archived: 1-4, 5-8, 9-12 (8, 9, 10 retained)."""
    alice = room.join("alice")
    for i in range(10):
        alice.publish(f"a{i}", f"secret {i}" if i == 5 else f"message {i}")
    alice.send({"type": "edit", "id": "e1", "target": 6, "body": "secret edit one"})
    alice.send({"type": "edit", "id": "e2", "target": 6, "body": "secret edit two"})
    run(room.host.alarm())
    assert segments(room) == [(1, 4), (5, 8), (9, 12)]
    assert b"secret 5" in segment_bytes(room, 5, 8)
    alice.leave()


def test_a_deleted_archived_message_is_served_by_no_read_and_its_segment_is_rewritten(
    archived_room: RoomHarness,
) -> None:
    """An operator deletes a pruned message: replay, history and admin reads serve no body at
    once; the next archive run rewrites both segments (the message's and its edits') in place."""
    room = archived_room
    archived_with_secrets(room)
    result = run(room.host.admin("delete", {"seq": "6"}))
    assert result == {"seq": 6, "author": "alice", "deleted_by_seq": 13, "already_deleted": False}
    assert room.host.engine.store.redaction_count() == 3  # 6 and its edits 11, 12
    assert room.alarm.at_ms == room.now_ms  # the rewrite is due at once
    reader = room.join("reader", since=0)
    replay = reader.ws.frames("message")
    assert [m["seq"] for m in replay] == list(range(1, 14))
    assert "secret" not in repr(replay)
    assert [(m["seq"], m.get("deleted")) for m in replay if m.get("deleted")] == [
        (6, True), (11, True), (12, True)]
    reader.send({"type": "history", "before": 10, "limit": 9, "fold": True})
    (page,) = reader.take("history")
    assert "secret" not in repr(page)
    assert {m["seq"]: m.get("deleted", False) for m in page["messages"]} == {
        seq: seq == 6 for seq in range(1, 10)}
    read = run(room.host.admin("messages", {"first": "1", "last": "13"}))
    assert "secret" not in repr(read)
    inspected = run(room.host.admin("inspect", {}))
    assert inspected["redactions_pending"] == 3
    assert inspected["events"] == {"edit": 2, "delete": 1, "react": 0, "unreact": 0}
    outcome = run(room.host.alarm())
    assert outcome is not None
    assert outcome.error is None
    assert b"secret" not in segment_bytes(room, 5, 8) + segment_bytes(room, 9, 12)
    assert b"message 4" in segment_bytes(room, 5, 8)
    assert room.host.engine.store.redaction_count() == 0
    assert room.archive is not None
    sizes = {int(r["first_seq"] or 0): int(r["bytes"] or 0) for r in
             run(room.archive.index.segments("lobby"))}
    on_disk = run(room.archive.bucket.get(segment_key("lobby", 5, 8)))
    assert on_disk is not None
    assert sizes[5] == len(on_disk)


def test_a_failed_rewrite_keeps_reads_redacted_and_is_retried(tmp_path: Path) -> None:
    """R2 refusing the rewrite: the failure is recorded and backed off, reads stay blank, and
    the retry rewrites the segment."""
    bindings, _ = archive_bindings(tmp_path, POLICY)
    room = RoomHarness(Limits(burst=1000), archive=bindings)
    archived_with_secrets(room)
    run(room.host.admin("delete", {"seq": "6"}))
    put = bindings.bucket.put
    refused: list[str] = []

    async def put_refusing_the_rewrite(key: str, data: bytes) -> None:
        if key == segment_key("lobby", 5, 8) and not refused:
            refused.append(key)
            raise OSError("R2 is down")
        await put(key, data)

    bindings.bucket.put = put_refusing_the_rewrite  # type: ignore[method-assign]
    failed = run(room.host.alarm())
    assert refused
    assert failed is not None
    assert failed.error == "OSError redacting segments"
    assert room.alarm.at_ms == room.now_ms + POLICY.retry_base_ms
    assert b"secret" in segment_bytes(room, 5, 8)  # still in R2 ...
    reader = room.join("reader", since=0)
    assert "secret" not in repr(reader.ws.frames("message"))  # ... but never served
    retried = run(room.host.alarm())
    assert retried is not None
    assert retried.error is None
    assert b"secret" not in segment_bytes(room, 5, 8) + segment_bytes(room, 9, 12)


def test_an_author_deletes_an_archived_but_retained_message(archived_room: RoomHarness) -> None:
    """Retained rows are blanked at once; the archived copy waits for the rewrite, unserved."""
    room = archived_room
    archived_with_secrets(room)
    alice = room.join("alice")
    alice.send({"type": "publish", "id": "late", "body": "secret late"})  # seq 13
    run(room.host.alarm())  # archived as 13-13; 10..13 retained
    alice.send({"type": "delete", "id": "d1", "target": 13})
    assert alice.take("ack")[-1]["seq"] == 14
    assert room.host.engine.store.redaction_count() == 1
    run(room.host.alarm())
    assert b"secret late" not in segment_bytes(room, 13, 13)
    assert room.host.engine.store.redaction_count() == 0


def test_operator_delete_refuses_what_is_not_a_message(archived_room: RoomHarness) -> None:
    room = archived_room
    archived_with_secrets(room)
    for seq in ("11", "99"):  # an edit event, beyond the head
        result = run(room.host.admin("delete", {"seq": seq}))
        assert result["refused"]["code"] == "message_not_found"
    first = run(room.host.admin("delete", {"seq": "2"}))
    again = run(room.host.admin("delete", {"seq": "2"}))
    assert again == {**first, "already_deleted": True}
