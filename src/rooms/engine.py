"""The room engine: every state transition of a room lives here.

`RoomEngine` is sans-I/O. Drivers (the Durable Object, the local runtime) hand it whole events
(a connection joined, a text or binary frame arrived, a socket closed) with the current time, and
it answers with `Effect`s to carry out. It writes to the room's `RoomStore` synchronously, before
returning any effect that shows the message to anyone, so nobody sees a message that is not
durable. Calls are synchronous, so each is atomic on both runtimes.

No input from a client raises out of `receive`: bad frames become `error` frames, repeated abuse
becomes a 1008 close, and an unexpected bug becomes a generic 1011 close.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

import msgspec

from rooms.effects import Broadcast, Close, Effect, Log, ReadArchive, SavePeer, Send, Stored
from rooms.lifecycle import MessageState, fold, valid_emoji
from rooms.limits import Limits
from rooms.peers import Budget, Peer
from rooms.protocol import (
    MAX_SIGNAL_DEPTH,
    PING_TEXT,
    PONG_TEXT,
    Ack,
    AnyClientFrame,
    CloseCode,
    Delete,
    Edit,
    Error,
    ErrorCode,
    Hello,
    History,
    HistoryRequest,
    Member,
    Message,
    Ping,
    Presence,
    Publish,
    React,
    Read,
    ReadState,
    Resume,
    SeqRange,
    Signal,
    SignalRelay,
    Welcome,
    decode_client_frame,
    encode,
)
from rooms.store import RoomStore

BAN_PREFIX = "ban:"  # room_meta keys of operators' timed bans
_CLIENT_TYPES = frozenset(
    {"hello", "publish", "history", "signal", "ping", "edit", "delete", "react", "read"}
)
OPERATOR_NAME = "operator"  # who an operator's delete is from; its user id "" no token carries


class RoomEngine:
    """One room's protocol logic over its store and its connections' `Peer` states."""

    def __init__(
        self,
        room: str,
        store: RoomStore,
        limits: Limits,
        peers: Iterable[Peer] = (),
        *,
        archive: bool = False,
    ) -> None:
        self.room = room
        # Whether ranges the room no longer retains can be read back from an archive.
        self.archive = archive
        self.store = store
        self.limits = limits
        # Rebuilt from socket attachments after hibernation; insertion order = join order.
        self.peers: dict[str, Peer] = {peer.conn_id: peer for peer in peers}
        # Each user's rate budget, shared by their sockets: rebuilt from the copy in the socket
        # that spent it last. A user's budget outlives their sockets until it is full again, so
        # reconnecting does not refill it either. Built when the user first needs it (a wake
        # then builds one, not one per member), from the sockets present at the wake
        # (`_woken_copies`); a socket leaving first hands its copy over (`forget`).
        self._budgets: dict[str, Budget] = {}
        self._woken_copies: dict[str, list[Peer]] | None = None
        # An operator closed the room to new messages (kept in the store, read once per wake).
        self.closed = bool(store.meta_as_opened("closed"))
        self._banned: dict[str, int] | None = None  # user id -> until when (ms)

    # ----------------------------------------------------------------------- queries

    def ban(self, user_id: str, until_ms: int) -> None:
        """Refuse ``user_id``'s upgrades until ``until_ms`` (an operator's timed ban)."""
        self.store.set_meta(BAN_PREFIX + user_id, until_ms)
        self._bans()[user_id] = until_ms

    def _bans(self) -> dict[str, int]:
        if self._banned is None:  # read once per wake, on the first arrival
            metas = self.store.metas(BAN_PREFIX)
            self._banned = {user: int(until) for user, until in metas.items() if until is not None}
        return self._banned

    def set_closed(self, closed: bool) -> None:
        self.store.set_meta("closed", int(closed))
        self.closed = closed

    def members(self) -> list[Member]:
        """Present users: one entry per user, however many sockets they hold."""
        seen: dict[str, Member] = {}
        for peer in self.peers.values():
            if peer.joined and peer.user_id not in seen:
                seen[peer.user_id] = _member(peer)
        return sorted(seen.values(), key=lambda m: m.user_id)

    def refusal(self, user_id: str, now_ms: int, address: str = "") -> str | None:
        """Why a new socket for ``user_id`` from ``address`` is refused (an error code), or None.

        Only joined members count towards `max_members`: sockets that never joined cannot lock
        a room. They count towards their user's `max_sockets_per_user` and their address's
        `max_sockets_per_address`, and are closed after `hello_timeout_ms` (`silent_sockets`).
        An operator's ban comes first."""
        if self._bans().get(user_id, 0) > now_ms:
            return ErrorCode.BANNED
        if (
            sum(p.user_id == user_id for p in self.peers.values())
            >= self.limits.max_sockets_per_user
        ):
            return ErrorCode.TOO_MANY_SOCKETS
        if (
            address
            and sum(p.address == address for p in self.peers.values())
            >= self.limits.max_sockets_per_address
        ):
            return ErrorCode.TOO_MANY_FROM_ADDRESS
        if not self._has_room_for(user_id):
            return ErrorCode.ROOM_FULL
        return None

    def _has_room_for(self, user_id: str) -> bool:
        members = {p.user_id for p in self.peers.values() if p.joined or p.joining}
        return user_id in members or len(members) < self.limits.max_members

    def silent_sockets(self, now_ms: int) -> list[Effect]:
        """Close the sockets that have not joined within `hello_timeout_ms` of connecting.

        Also forgets the budgets of users who left once they are full again (the same as a new
        user's), so the map stays as small as the room's recent senders."""
        present = {peer.user_id for peer in self.peers.values()}
        for user_id, budget in list(self._budgets.items()):
            if user_id not in present and budget.full_by(self.limits) <= now_ms:
                del self._budgets[user_id]
        deadline = now_ms - self.limits.hello_timeout_ms
        return [
            Close(conn_id, CloseCode.POLICY_VIOLATION, "join with hello in time")
            for conn_id, peer in self.peers.items()
            if not (peer.joined or peer.joining) and peer.connected_ms < deadline
        ]

    def _joined_ids(self, exclude: str | None = None) -> tuple[str, ...]:
        return tuple(c for c, p in self.peers.items() if p.joined and c != exclude)

    def _budget(self, peer: Peer) -> Budget:
        budget = self._budgets.get(peer.user_id)
        if budget is None:
            budget = self._budgets[peer.user_id] = self._rebuilt_budget(peer)
        return budget

    def _rebuilt_budget(self, peer: Peer) -> Budget:
        """``peer``'s user's budget, not built since the wake: the freshest copy among the
        sockets the room woke with (`Budget.fresher`), or ``peer``'s own when it has none."""
        if self._woken_copies is None:  # once per wake, on the first budget needed
            self._woken_copies = {}
            for woken in self.peers.values():
                self._woken_copies.setdefault(woken.user_id, []).append(woken)
        budget: Budget | None = None
        for copy in self._woken_copies.pop(peer.user_id, ()):
            held = Budget.of(copy, self.limits)
            budget = held if budget is None else budget.fresher(held)
        return budget if budget is not None else Budget.of(peer, self.limits)

    def forget(self, conn_id: str) -> Peer | None:
        """Stop tracking a socket. Its user's budget is built first if it was not yet, so that
        the copy this socket holds is not lost: closing a socket never refills a budget."""
        peer = self.peers.get(conn_id)
        if peer is not None and peer.user_id not in self._budgets:
            self._budget(peer)
        return self.peers.pop(conn_id, None)

    def _user_present(self, user_id: str, exclude: str | None = None) -> bool:
        return any(
            p.joined and p.user_id == user_id and c != exclude for c, p in self.peers.items()
        )

    # ----------------------------------------------------------------------- events

    def connect(self, peer: Peer, since: int | None, now_ms: int) -> list[Effect]:
        """A socket was accepted. It joins now if it named ``since``, else on its `Hello`.

        One log line per connection: a socket that joins as it connects gets no `join` line of
        its own, its `connect` line carries the head it joined at (``seq``) and comes last,
        after its welcome. A `join` line is written only for a join in a later event (a `Hello`,
        or a replay that had to read the archive first)."""
        self.peers[peer.conn_id] = peer
        self._budget(peer)
        connected = Log("connect", peer.conn_id, peer.user_id, per_connection=True)
        if since is None:
            return [connected, SavePeer(peer)]
        effects = self._join(peer, since, now_ms)
        for index, effect in enumerate(effects):
            if isinstance(effect, Log) and effect.event == "join":
                effects[index] = dataclasses.replace(effect, event="connect")
                return effects
        return [connected, *effects]

    def disconnect(self, gone: Peer, now_ms: int) -> list[Effect]:
        """A socket closed or failed. Broadcasts a leave when it was the user's last socket.

        ``gone`` is the socket's peer as its attachment holds it: a rebuilt room that no longer
        tracks the socket still announces the leave, under the member's own name, so a member
        never lingers as a ghost.
        """
        peer = self.forget(gone.conn_id) or gone
        effects: list[Effect] = [Log("disconnect", peer.conn_id, peer.user_id, per_connection=True)]
        if not peer.joined or self._user_present(peer.user_id):
            return effects
        presence = Presence(event="leave", member=_member(peer))
        effects.append(Broadcast(self._joined_ids(), encode(presence)))
        return effects

    def receive(self, conn_id: str, data: str | bytes, now_ms: int) -> list[Effect]:
        """One frame from a connection. Never raises for anything the client sent."""
        peer = self.peers.get(conn_id)
        if peer is None:
            return [Log("frame_from_unknown_connection", conn_id)]
        try:
            return self._receive(peer, data, now_ms)
        except Exception as exc:  # a bug, not bad input: close without details
            return [
                Log("internal_error", conn_id, peer.user_id, code=type(exc).__name__),
                Send(conn_id, encode(Error(code=ErrorCode.INTERNAL, message="internal error"))),
                Close(conn_id, CloseCode.INTERNAL_ERROR, "internal error"),
            ]

    # ----------------------------------------------------------------------- internals

    def _receive(self, peer: Peer, data: str | bytes, now_ms: int) -> list[Effect]:
        if isinstance(data, bytes):
            if len(data) > self.limits.max_frame_bytes:
                return self._too_big(peer)
            return self._reject(
                peer, ErrorCode.BINARY_NOT_SUPPORTED, "frames must be JSON text", now_ms
            )
        if _utf8_len_over(data, self.limits.max_frame_bytes):
            return self._too_big(peer)
        if data == PING_TEXT:
            return [Send(peer.conn_id, PONG_TEXT)]
        try:
            frame = decode_client_frame(data)
        except UnicodeError:  # lone surrogates: not representable as UTF-8 JSON
            return self._reject(peer, ErrorCode.BAD_JSON, "frame is not valid UTF-8", now_ms)
        except RecursionError:  # a small frame can nest deeper than any parser recurses
            return self._reject(peer, ErrorCode.BAD_JSON, TOO_DEEP, now_ms)
        except msgspec.DecodeError as exc:
            code, message = _classify_bad_frame(data, exc)
            return self._reject(peer, code, message, now_ms)
        return self._dispatch(peer, frame, now_ms)

    def _dispatch(self, peer: Peer, frame: AnyClientFrame, now_ms: int) -> list[Effect]:
        if isinstance(frame, Ping):
            return [Send(peer.conn_id, PONG_TEXT)]
        if isinstance(frame, Hello):
            if peer.joined or peer.joining:
                return self._reject(peer, ErrorCode.ALREADY_JOINED, "already joined", now_ms)
            if not self._has_room_for(peer.user_id):  # filled up since this socket connected
                return [
                    Send(
                        peer.conn_id,
                        encode(Error(code=ErrorCode.ROOM_FULL, message="the room is full")),
                    ),
                    Close(peer.conn_id, CloseCode.POLICY_VIOLATION, "the room is full"),
                ]
            since = frame.since if frame.since is not None else self.store.head
            return self._join(peer, since, now_ms)
        if not peer.joined:
            return self._reject(peer, ErrorCode.HELLO_REQUIRED, "send a hello frame first", now_ms)
        budget = self._budget(peer)
        take = budget.take_signal if isinstance(frame, Signal) else budget.take
        allowed = take(self.limits, now_ms)
        budget.save_to(peer)  # this socket's attachment now holds the freshest copy
        if not allowed:
            return self._reject(
                peer,
                ErrorCode.RATE_LIMITED,
                "too many frames; slow down",
                now_ms,
                ref=getattr(frame, "id", None) or getattr(frame, "ref", None),
            )
        peer.strikes = max(0, peer.strikes - 1)
        match frame:
            case Publish():
                return self._publish(peer, frame, now_ms)
            case HistoryRequest():
                return self._history(peer, frame)
            case Edit() | Delete() | React():
                return self._lifecycle(peer, frame, now_ms)
            case Read():
                return self._read(peer, frame, now_ms)
            case Signal():
                if _nested_deeper_than(frame.data, MAX_SIGNAL_DEPTH):
                    message = f"signal `data` may nest at most {MAX_SIGNAL_DEPTH} levels deep"
                    return self._reject(peer, ErrorCode.BAD_FRAME, message, now_ms)
                if len(msgspec.json.encode(frame.data)) > self.limits.max_signal_bytes:
                    message = f"signal `data` over {self.limits.max_signal_bytes} bytes of JSON"
                    return self._reject(peer, ErrorCode.SIGNAL_TOO_LARGE, message, now_ms)
                relay = SignalRelay(user_id=peer.user_id, kind=frame.kind, data=frame.data)
                return [
                    SavePeer(peer),
                    Broadcast(self._joined_ids(exclude=peer.conn_id), encode(relay)),
                ]
        raise AssertionError(f"unhandled frame {frame!r}")  # pragma: no cover

    def _join(self, peer: Peer, since: int, now_ms: int) -> list[Effect]:
        head = self.store.head
        if since > head:
            resume = Resume(since=since, complete=False, reason=ErrorCode.SINCE_AHEAD)
            return self._welcome(peer, resume, [], head, now_ms)
        # Replay at most max_replay messages: the newest ones. Older ones are named as missing
        # (reason replay_limit) and the client pages them with `history`.
        replay_after = max(since, head - self.limits.max_replay)
        skipped = [SeqRange(since + 1, replay_after)] if replay_after > since else []
        oldest = self.store.oldest_retained()
        if replay_after + 1 < oldest:
            if self.archive:
                peer.joining = True
                read = ReadArchive(
                    peer.conn_id,
                    replay_after + 1,
                    oldest - 1,
                    "join",
                    since=since,
                    missing=tuple(skipped),
                )
                return [SavePeer(peer), read]
            skipped.append(SeqRange(replay_after + 1, oldest - 1))
            replay_after = oldest - 1
        return self._finish_join(peer, since, skipped, [], replay_after, now_ms)

    def archive_read(
        self,
        request: ReadArchive,
        messages: list[Message],
        missing: list[SeqRange],
        now_ms: int,
    ) -> list[Effect]:
        """The archived part of a join replay or of a history page has arrived (or failed)."""
        peer = self.peers.get(request.conn_id)
        if peer is None:
            return []  # the socket left meanwhile
        # The archive may predate a delete: blank what was deleted since (docs/protocol.md).
        messages = self.store.redact(messages)
        if request.purpose == "join":
            peer.joining = False
            skipped = [*request.missing, *missing]
            return self._finish_join(peer, request.since, skipped, messages, request.last, now_ms)
        retained = self.store.between(request.last + 1, request.before - 1)
        page = [*messages, *retained]
        low = request.first
        reply = self._page(
            peer, page, low, request.before - 1, request.fold, request.ref, missing=missing
        )
        return [Send(peer.conn_id, encode(reply))]

    def _finish_join(
        self,
        peer: Peer,
        since: int,
        skipped: list[SeqRange],
        archived: list[Message],
        replayed_to: int,
        now_ms: int,
    ) -> list[Effect]:
        """Welcome, then archived and retained messages after ``since``, then live traffic."""
        retained = self.store.after(replayed_to, self.limits.max_replay + 1)
        if retained and retained[0].seq != replayed_to + 1:
            # Pruned while the archive was read: name the hole rather than skip it.
            skipped.append(SeqRange(replayed_to + 1, retained[0].seq - 1))
        replay = [encode(message) for message in [*archived, *retained]]
        seqs = [message.seq for message in [*archived, *retained]]
        # The replay goes out at once and counts against the client's backlog like any traffic:
        # only the newest half of `max_backlog_bytes` is replayed, the rest is paged.
        kept = _newest_within(replay, self.limits.max_backlog_bytes // 2)
        byte_limited = kept < len(replay)
        if byte_limited:
            cut_to = seqs[len(replay) - kept - 1]
            later = [gap for gap in skipped if gap.first > cut_to]
            skipped = [SeqRange(since + 1, cut_to), *later]
            replay = replay[len(replay) - kept :]
        reason = None
        if skipped:
            # The replay limits skip the oldest part; anything else is no longer retained.
            limited = byte_limited or (
                skipped[0].first == since + 1 and since < self.store.head - self.limits.max_replay
            )
            reason = "replay_limit" if limited else "not_retained"
        resume = Resume(since=since, complete=not skipped, missing=skipped, reason=reason)
        return self._welcome(peer, resume, replay, self.store.head, now_ms)

    def _welcome(
        self, peer: Peer, resume: Resume, replay: list[str], head: int, now_ms: int
    ) -> list[Effect]:
        """Welcome, then ``replay`` (encoded messages, oldest first), then the join."""
        first_socket = not self._user_present(peer.user_id, exclude=peer.conn_id)
        peer.joined = True
        peer.joined_ms = now_ms
        read = self.store.read_seq(peer.user_id)
        welcome = Welcome(
            room=self.room,
            user_id=peer.user_id,
            conn_id=peer.conn_id,
            head=head,
            presence=self.members(),
            resume=resume,
            max_body_chars=self.limits.max_body_chars,
            read=read,
            unread=self.store.unread(peer.user_id, read),
        )
        effects: list[Effect] = [SavePeer(peer), Send(peer.conn_id, encode(welcome))]
        effects.extend(Send(peer.conn_id, text) for text in replay)
        if first_socket:
            me = _member(peer)
            presence = Presence(event="join", member=me)
            effects.append(Broadcast(self._joined_ids(exclude=peer.conn_id), encode(presence)))
        effects.append(Log("join", peer.conn_id, peer.user_id, seq=head, per_connection=True))
        return effects

    def _publish(self, peer: Peer, frame: Publish, now_ms: int) -> list[Effect]:
        if self.closed:
            error = Error(
                code=ErrorCode.ROOM_CLOSED,
                message="the room is closed to new messages",
                ref=frame.id,
            )
            return [SavePeer(peer), Send(peer.conn_id, encode(error))]
        if len(frame.body) > self.limits.max_body_chars:
            return self._reject(
                peer,
                ErrorCode.BODY_TOO_LONG,
                f"body is longer than {self.limits.max_body_chars} characters",
                now_ms,
                ref=frame.id,
            )
        message, duplicate = self.store.append(
            id=frame.id, user_id=peer.user_id, name=peer.name, body=frame.body, sent_ms=now_ms
        )
        ack = Send(peer.conn_id, encode(Ack(id=frame.id, seq=message.seq, duplicate=duplicate)))
        if duplicate:
            return [
                SavePeer(peer),
                ack,
                Log(
                    "publish_duplicate",
                    peer.conn_id,
                    peer.user_id,
                    seq=message.seq,
                    per_message=True,
                ),
            ]
        peer.sent += 1
        peer.last_message_ms = now_ms
        return [
            SavePeer(peer),
            ack,
            Broadcast(self._joined_ids(), encode(message)),
            Stored(message.seq),
            Log("publish", peer.conn_id, peer.user_id, seq=message.seq, per_message=True),
        ]

    def _history(self, peer: Peer, frame: HistoryRequest) -> list[Effect]:
        head = self.store.head
        before = min(frame.before if frame.before is not None else head + 1, head + 1)
        limit = min(frame.limit, self.limits.max_history_page)
        # Seqs are gapless, so the page is exactly [low, before - 1].
        low = max(1, before - limit)
        oldest = self.store.oldest_retained()
        effects: list[Effect] = [SavePeer(peer)]
        if before <= 1:
            reply = History(messages=[], ref=frame.ref, next_before=None)
        elif low < oldest and self.archive:
            last = min(before - 1, oldest - 1)
            read = ReadArchive(
                peer.conn_id, low, last, "history", before=before, ref=frame.ref, fold=frame.fold
            )
            return [*effects, read]
        else:
            missing = [SeqRange(low, min(before - 1, oldest - 1))] if low < oldest else []
            page = self.store.between(low, before - 1)
            reply = self._page(peer, page, low, before - 1, frame.fold, frame.ref, missing)
        return [*effects, Send(peer.conn_id, encode(reply))]

    def _page(
        self,
        peer: Peer,
        page: list[Message],
        first: int,
        last: int,
        folded: bool,
        ref: str | None,
        missing: list[SeqRange],
    ) -> History:
        """A history reply for seqs [first, last]: the raw log, or its messages folded."""
        next_before = first if first > 1 else None
        if not folded:
            return History(messages=page, ref=ref, next_before=next_before, missing=missing)
        states = self.store.states_between(first, last)
        reactions = self.store.reactions_between(first, last, peer.user_id)
        return History(
            messages=fold(page, states, reactions),
            ref=ref,
            next_before=next_before,
            missing=missing,
            as_of=self.store.head,
        )

    # ----------------------------------------------------------------------- lifecycle

    def _lifecycle(self, peer: Peer, frame: Edit | Delete | React, now_ms: int) -> list[Effect]:
        """An edit, delete or reaction: checked, stored as the next event, acked, broadcast."""
        original = self.store.dedupe_seq(peer.user_id, frame.id)
        if original is not None:  # a retransmit: the first answer again, nothing stored
            return [SavePeer(peer), _ack(peer, frame.id, original, duplicate=True)]
        if self.closed and not isinstance(frame, Delete):
            error = Error(
                code=ErrorCode.ROOM_CLOSED,
                message="the room is closed to new messages",
                ref=frame.id,
            )
            return [SavePeer(peer), Send(peer.conn_id, encode(error))]
        refused = self._check_target(frame)
        target = self.store.get(frame.target) if refused is None else None
        if target is None:
            code, message = refused or (ErrorCode.TARGET_NOT_RETAINED, _NOT_RETAINED)
            return self._reject(peer, code, message, now_ms, ref=frame.id)
        if target.kind is not None:
            message = "`target` is an event, not a message"
            return self._reject(peer, ErrorCode.TARGET_NOT_FOUND, message, now_ms, ref=frame.id)
        state = self.store.state(target.seq)
        problem = self._refusal(peer, frame, target, state)
        if problem is not None:
            return self._reject(peer, *problem, now_ms, ref=frame.id)
        if isinstance(frame, Delete) and state is not None and state.deleted_seq is not None:
            return [SavePeer(peer), _ack(peer, frame.id, state.deleted_seq, duplicate=True)]
        who, name, id_ = peer.user_id, peer.name, frame.id
        match frame:
            case Edit():
                event = self.store.edit(
                    id=id_, user_id=who, name=name, sent_ms=now_ms, target=target, body=frame.body
                )
            case Delete():
                event = self.store.delete(
                    id=id_, user_id=who, name=name, sent_ms=now_ms, target=target.seq, author=who
                )
            case React():
                mine = self.store.reaction_seq(target.seq, frame.emoji, peer.user_id)
                if (mine is not None) != frame.remove:  # already so: nothing to store
                    return [SavePeer(peer), _ack(peer, frame.id, mine or 0, duplicate=True)]
                if not frame.remove:
                    on = self.store.emoji_on(target.seq)
                    if frame.emoji not in on and len(on) >= self.limits.max_reactions_per_message:
                        limit = self.limits.max_reactions_per_message
                        message = f"a message carries at most {limit} distinct reactions"
                        return self._reject(
                            peer, ErrorCode.TOO_MANY_REACTIONS, message, now_ms, ref=frame.id
                        )
                event = self.store.react(
                    id=id_,
                    user_id=who,
                    name=name,
                    sent_ms=now_ms,
                    target=target.seq,
                    emoji=frame.emoji,
                    remove=frame.remove,
                )
        return [
            SavePeer(peer),
            _ack(peer, frame.id, event.seq),
            Broadcast(self._joined_ids(), encode(event)),
            Stored(event.seq),
            Log(str(event.kind), peer.conn_id, peer.user_id, seq=event.seq, per_message=True),
        ]

    def _check_target(self, frame: Edit | Delete | React) -> tuple[str, str] | None:
        if frame.target > self.store.head:
            return ErrorCode.TARGET_NOT_FOUND, "`target` is beyond the newest seq"
        return None

    def _refusal(
        self, peer: Peer, frame: Edit | Delete | React, target: Message, state: MessageState | None
    ) -> tuple[str, str] | None:
        """Why this user may not do this to ``target`` (an error code and message), or None."""
        if isinstance(frame, Edit | Delete) and target.user_id != peer.user_id:
            return ErrorCode.NOT_AUTHOR, "only the author may edit or delete a message"
        if isinstance(frame, Delete):
            return None
        if state is not None and state.deleted:
            return ErrorCode.TARGET_DELETED, "the message was deleted"
        if isinstance(frame, Edit):
            if len(frame.body) > self.limits.max_body_chars:
                limit = self.limits.max_body_chars
                return ErrorCode.BODY_TOO_LONG, f"body is longer than {limit} characters"
            if state is not None and state.edits >= self.limits.max_edits_per_message:
                limit = self.limits.max_edits_per_message
                return ErrorCode.TOO_MANY_EDITS, f"a message can be edited at most {limit} times"
            if self.limits.max_edits_per_message == 0:
                return ErrorCode.TOO_MANY_EDITS, "editing is off in this room"
            return None
        if not valid_emoji(frame.emoji, self.limits.max_emoji_chars):
            limit = self.limits.max_emoji_chars
            return ErrorCode.BAD_EMOJI, f"`emoji` must be one emoji of at most {limit} code points"
        return None

    def operator_delete(self, target: int, author: str, now_ms: int) -> tuple[list[Effect], int]:
        """An operator deletes message ``target`` (checked by the caller); returns its seq.

        The event's seq, or that of the earlier delete when the message was already deleted."""
        state = self.store.state(target)
        if state is not None and state.deleted_seq is not None:
            return [], state.deleted_seq
        event = self.store.delete(
            id=f"operator-delete-{target}",
            user_id="",
            name=OPERATOR_NAME,
            target=target,
            author=author,
            sent_ms=now_ms,
        )
        return [
            Broadcast(self._joined_ids(), encode(event)),
            Stored(event.seq),
            Log("operator_delete", seq=event.seq),
        ], event.seq

    def _read(self, peer: Peer, frame: Read, now_ms: int) -> list[Effect]:
        """The user's read position moves forward: tell each of their sockets, nobody else."""
        seq = min(frame.seq, self.store.head)
        if seq <= self.store.read_seq(peer.user_id):
            return [SavePeer(peer)]
        self.store.set_read(peer.user_id, seq, now_ms)
        state = ReadState(seq=seq, unread=self.store.unread(peer.user_id, seq))
        mine = tuple(c for c, p in self.peers.items() if p.joined and p.user_id == peer.user_id)
        return [SavePeer(peer), Broadcast(mine, encode(state))]

    def _reject(
        self, peer: Peer, code: str, message: str, now_ms: int, ref: str | None = None
    ) -> list[Effect]:
        peer.strikes += 1
        effects: list[Effect] = [
            SavePeer(peer),
            Send(peer.conn_id, encode(Error(code=code, message=message, ref=ref))),
            Log("rejected", peer.conn_id, peer.user_id, code=code),
        ]
        if peer.strikes > self.limits.max_strikes:
            effects.append(Close(peer.conn_id, CloseCode.POLICY_VIOLATION, "too many bad frames"))
        return effects

    def _too_big(self, peer: Peer) -> list[Effect]:
        limit = self.limits.max_frame_bytes
        error = Error(code=ErrorCode.FRAME_TOO_LARGE, message=f"frame is over {limit} bytes")
        return [
            Send(peer.conn_id, encode(error)),
            Close(peer.conn_id, CloseCode.MESSAGE_TOO_BIG, "frame too large"),
            Log("rejected", peer.conn_id, peer.user_id, code=ErrorCode.FRAME_TOO_LARGE),
        ]


def _utf8_len_over(text: str, limit: int) -> bool:
    # A str of n chars is between n and 4n UTF-8 bytes: encode only when it could matter.
    if len(text) * 4 <= limit:
        return False
    return len(text) > limit or len(text.encode("utf-8", "surrogatepass")) > limit


TOO_DEEP = "frame is nested too deeply"
_NOT_RETAINED = "`target` is older than what the room keeps; an operator can still delete it"


def _ack(peer: Peer, id: str, seq: int, *, duplicate: bool = False) -> Send:
    return Send(peer.conn_id, encode(Ack(id=id, seq=seq, duplicate=duplicate)))


def _member(peer: Peer) -> Member:
    return Member(user_id=peer.user_id, name=peer.name, guest=peer.guest)


def _newest_within(texts: list[str], budget_bytes: int) -> int:
    """How many of the newest ``texts`` fit in ``budget_bytes`` of UTF-8 (at least one)."""
    total = 0
    for count, text in enumerate(reversed(texts)):
        total += len(text.encode())
        if total > budget_bytes and count > 0:
            return count
    return len(texts)


def _nested_deeper_than(value: Any, limit: int) -> bool:
    """Whether lists and objects in ``value`` nest more than ``limit`` levels (no recursion)."""
    pending: list[tuple[Any, int]] = [(value, 0)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth >= limit:
            return True
        pending.extend((child, depth + 1) for child in children)
    return False


def _classify_bad_frame(text: str, exc: msgspec.DecodeError) -> tuple[str, str]:
    """Turn a decode failure into a precise error code and a message that helps the client."""
    try:
        value: Any = msgspec.json.decode(text)
    except msgspec.DecodeError:
        return ErrorCode.BAD_JSON, "frame is not valid JSON"
    except RecursionError:
        return ErrorCode.BAD_JSON, TOO_DEEP
    if not isinstance(value, dict) or not isinstance(value.get("type"), str):
        return ErrorCode.BAD_FRAME, "frame must be a JSON object with a string `type`"
    if value["type"] not in _CLIENT_TYPES:
        return ErrorCode.UNKNOWN_TYPE, f"unknown frame type {value['type'][:32]!r}"
    return ErrorCode.BAD_FRAME, str(exc)[:200]
