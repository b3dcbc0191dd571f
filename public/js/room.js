// One room over one WebSocket (docs/protocol.md): join, deliver every message once and in seq
// order, reconnect with backoff and resume from the last seq, and keep unacknowledged messages
// (under their client id, so a retransmit is never stored twice) until the room has them.
// Own messages go out one at a time, each after the previous ack, so that a rate-limited or
// lost publish can never be overtaken by a later one: the room stores them in the order typed.
//
// The page never trips the room's limits by itself: one publish in flight at a time, a pause
// that grows while the room answers `rate_limited`, and signals (typing) at most one a second,
// paused for a while when the room refuses one.
//
// When an upgrade fails, browsers do not say why: the connection asks the room's pre-check
// (`GET /rooms/{room}/check`, docs/protocol.md#connecting) for the HTTP error the upgrade got,
// and stops retrying when retrying cannot help (a full room, a ban, a token this server did not
// sign), renewing a guest token once first.
//
// Edits, deletes and reactions (docs/protocol.md, "Message lifecycle") go through the same
// ordered, idempotent outbox as messages; they arrive back as `message` frames with a `kind`,
// emitted as `event`. History pages are asked for folded, so they bring messages as they are now.
//
// Events (CustomEvent.detail): state {state, retryAt} (state: connecting | online | waiting |
// stopped | refused), welcome {welcome, reset}, message, event (a lifecycle event), history
// {messages, done, missing}, pending, presence, signal, read {seq, unread}, notice {code,
// message}, refused {status, code, message}.

const PING = '{"type":"ping"}'; // answered by the platform without waking the room
const PING_EVERY_MS = 20_000;
const SILENT_AFTER_MS = 45_000; // nothing heard for this long: the connection is dead
const RATE_LIMITED_RETRY_MS = 1_000; // the first pause after `rate_limited`; doubles up to:
const RATE_LIMITED_MAX_MS = 8_000;
const SIGNAL_EVERY_MS = 1_000; // at most one signal a second (the room allows 10)
const SIGNAL_PAUSE_MS = 5_000; // after the room refused a signal
// Refusals that retrying cannot cure: stop and say why (a person may still retry by hand).
const RETRYABLE_STATUS = new Set([404, 408, 425, 429, 500, 502, 503, 504]);
const TOKEN_CODES = new Set(["token_missing", "token_invalid", "token_expired", "token_claims"]);
const HISTORY_PAGE = 50;

// Exponential backoff with "equal jitter": half the ceiling plus a random half, so retries
// neither hammer the server nor arrive in lockstep from every page after an outage.
export function backoffDelay(attempt, random = Math.random) {
  const ceiling = Math.min(30_000, 500 * 2 ** attempt);
  return ceiling / 2 + (random() * ceiling) / 2;
}

export function newId() {
  const bytes = crypto.getRandomValues(new Uint8Array(12));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

export class RoomConnection extends EventTarget {
  // getToken(force) resolves to a token; force asks for a fresh one after a refused upgrade.
  constructor(room, getToken) {
    super();
    this.room = room;
    this.getToken = getToken;
    this.state = "idle"; // connecting | online | waiting | stopped
    this.head = null; // every seq up to here has been delivered (null: never joined)
    this.oldest = null; // the oldest seq delivered; history pages go below it
    this.historyDone = false;
    this.historyRef = null;
    this.user = null;
    this.maxBodyChars = 0; // the room's limit on a body, from its welcome (0: not known yet)
    this.ws = null;
    this.attempt = 0;
    this.retryAt = 0;
    this.timer = null;
    this.heartbeat = null;
    this.lastHeard = 0;
    this.renewToken = false;
    this.renewed = false; // the token was renewed after a refusal (once per refusal)
    this.token = null; // the token of the latest attempt
    this.refusal = null; // {status, code, message} while refused
    this.storageKey = `rooms.pending.${room}`;
    // In the order typed: id -> {id, body, state: queued|sending|sent|failed, error}; an edit,
    // delete or reaction also has its `frame`.
    this.pending = new Map();
    this.readSent = 0; // the highest read seq sent on this connection
    this.inflight = null; // the id of the publish awaiting its ack
    this.pausedUntil = 0; // after a rate_limited answer
    this.slowdowns = 0; // rate_limited answers since the last ack
    this.signalAt = 0; // when the next signal may go out
    this.signals = new Map(); // kind -> data: the latest signal of each kind waiting for its turn
    this.signalTimer = null;
    for (const { id, body, frame } of JSON.parse(sessionStorage.getItem(this.storageKey) ?? "[]")) {
      this.pending.set(id, { id, body, frame, state: "queued" });
    }
  }

  emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  setState(state) {
    this.state = state;
    this.emit("state", { state, retryAt: this.retryAt });
  }

  // ------------------------------------------------------------------ connection lifecycle

  async open() {
    if (["connecting", "online", "stopped", "refused"].includes(this.state)) return;
    clearTimeout(this.timer);
    this.setState("connecting");
    let token;
    try {
      token = await this.getToken(this.renewToken);
      this.token = token;
      this.renewToken = false;
    } catch (error) {
      this.emit("notice", { code: error.code, message: error.message });
      if (error.code === "guest_tokens_disabled" || error.code === "token_expired") {
        this.stop();
      } else {
        this.retryLater(error.retryAfterS * 1000);
      }
      return;
    }
    if (this.state !== "connecting") return; // left while the token was on its way
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const since = this.head === null ? "" : `?since=${this.head}`;
    const url = `${scheme}//${location.host}/rooms/${encodeURIComponent(this.room)}/ws${since}`;
    const ws = new WebSocket(url, ["rooms.v1", token]);
    this.ws = ws;
    ws.onopen = () => {
      this.lastHeard = Date.now();
      if (this.head === null) ws.send('{"type":"hello"}'); // first join: start at the head
      this.heartbeat = setInterval(() => this.beat(), PING_EVERY_MS);
    };
    ws.onmessage = (event) => {
      this.lastHeard = Date.now();
      this.receive(JSON.parse(event.data));
    };
    ws.onclose = (event) => this.dropped(ws, event.code, this.lastHeard > 0);
    ws.onerror = () => {}; // a close event always follows
    this.lastHeard = 0;
  }

  beat() {
    if (Date.now() - this.lastHeard > SILENT_AFTER_MS) {
      this.restart(); // a half-open connection: don't wait for TCP to notice
    } else {
      this.ws?.send(PING);
    }
  }

  // Drop this socket now and reconnect (resuming from the head).
  restart() {
    const ws = this.ws;
    if (!ws) return;
    this.dropped(ws, 4000, true);
    ws.close();
  }

  async dropped(ws, code, opened) {
    if (ws !== this.ws) return;
    this.ws = null;
    this.historyRef = null;
    this.readSent = 0;
    clearInterval(this.heartbeat);
    this.inflight = null;
    for (const item of this.pending.values()) if (item.state !== "failed") item.state = "queued";
    if (code === 4003) {
      this.emit("notice", { code: "kicked", message: "An operator disconnected you from this room." });
      this.stop();
      return;
    }
    if (this.refusal) {
      this.refuse(this.refusal); // the room said why in an error frame before closing
      return;
    }
    if (code === 1008) {
      this.emit("notice", { code: "policy", message: "The room closed the connection after too many refused frames." });
    }
    if (!opened && this.state === "connecting") {
      // The upgrade failed, and browsers don't say why: ask the room's pre-check.
      const verdict = await this.precheck();
      if (this.state !== "connecting") return; // left meanwhile
      if (verdict && TOKEN_CODES.has(verdict.code) && !this.renewed) {
        this.renewed = true; // a new token might do: once, at once
        this.renewToken = true;
        this.state = "idle";
        this.open();
        return;
      }
      if (verdict && !RETRYABLE_STATUS.has(verdict.status)) {
        this.refuse(verdict);
        return;
      }
    }
    if (this.state !== "stopped") this.retryLater();
  }

  // What the room answers an upgrade with this token now: {status, code, message}, or null when
  // it would be admitted or cannot be asked (an outage: retrying is right).
  async precheck() {
    const url = `/rooms/${encodeURIComponent(this.room)}/check`;
    try {
      const response = await fetch(url, {
        headers: { authorization: `Bearer ${this.token}` },
        cache: "no-store",
        credentials: "omit",
      });
      if (response.ok) return null;
      const answer = await response.json().catch(() => null);
      const error = answer?.error ?? {};
      return { status: response.status, code: error.code ?? `http_${response.status}`, message: error.message ?? "" };
    } catch {
      return null;
    }
  }

  // Retrying cannot help: stop, say why, until asked to try again.
  refuse(refusal) {
    clearTimeout(this.timer);
    this.refusal = refusal;
    this.emit("refused", refusal);
    this.setState("refused");
  }

  retryLater(atLeastMs = 0) {
    const delay = Math.max(atLeastMs, backoffDelay(this.attempt++));
    this.retryAt = Date.now() + delay;
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.open(), delay);
    this.setState("waiting");
  }

  retryNow() {
    if (["waiting", "stopped", "refused"].includes(this.state)) {
      this.state = "idle";
      this.refusal = null;
      this.renewed = false;
      this.open();
    }
  }

  stop() {
    clearTimeout(this.timer);
    this.setState("stopped");
  }

  leave() {
    this.stop();
    const ws = this.ws;
    this.ws = null;
    clearInterval(this.heartbeat);
    if (ws) {
      ws.onclose = null;
      ws.close(1000);
    }
  }

  // ------------------------------------------------------------------ frames from the room

  receive(frame) {
    switch (frame.type) {
      case "welcome":
        return this.welcome(frame);
      case "message":
        return this.message(frame);
      case "ack":
        return this.ack(frame);
      case "history":
        return this.history(frame);
      case "presence":
        return this.emit("presence", frame);
      case "signal":
        return this.emit("signal", frame);
      case "read":
        return this.emit("read", frame);
      case "error":
        return this.error(frame);
    }
  }

  welcome(frame) {
    this.user = { user_id: frame.user_id };
    this.maxBodyChars = frame.max_body_chars || this.maxBodyChars; // 0: an older room
    this.attempt = 0;
    this.renewed = false;
    this.refusal = null;
    const { resume } = frame;
    let reset = this.head === null;
    if (!reset && resume.reason === "since_ahead") {
      reset = true; // the room's storage is older than what we have seen: start over
      this.head = frame.head;
    } else if (!reset && !resume.complete && resume.missing.length > 0) {
      // Part of what we missed is not replayed; show from the replay on and page the rest.
      reset = true;
      this.head = resume.missing[resume.missing.length - 1][1];
    } else if (reset) {
      this.head = frame.head;
    }
    if (reset) {
      this.oldest = this.head + 1;
      this.historyDone = false;
    }
    this.emit("welcome", { welcome: frame, reset });
    this.setState("online");
    this.emit("presence", { members: frame.presence });
    if (reset) this.loadOlder();
    this.pump();
  }

  message(frame) {
    if (frame.seq <= this.head) return; // already delivered
    if (frame.seq !== this.head + 1) {
      this.restart(); // never expected: a gap. Resume from what we have.
      return;
    }
    this.head = frame.seq;
    if (frame.user_id === this.user.user_id && this.pending.delete(frame.id)) this.savePending();
    this.emit(frame.kind ? "event" : "message", frame); // an unknown kind changes nothing
  }

  ack(frame) {
    if (frame.id === this.inflight) this.inflight = null;
    this.slowdowns = 0;
    const item = this.pending.get(frame.id);
    if (item && frame.seq <= this.head) {
      this.pending.delete(frame.id); // a retransmit of a message we already have
      this.savePending();
    } else if (item) {
      item.state = "sent"; // its message frame follows
      this.emit("pending");
    }
    this.pump();
  }

  history(frame) {
    if (frame.ref !== this.historyRef) return;
    this.historyRef = null;
    const messages = frame.messages.filter((m) => m.seq < this.oldest);
    this.oldest = Math.min(this.oldest, frame.next_before ?? 1, ...messages.map((m) => m.seq));
    this.historyDone = frame.next_before === null;
    this.emit("history", { messages, done: this.historyDone, missing: frame.missing });
  }

  error(frame) {
    const item = frame.ref && this.pending.get(frame.ref);
    if (item?.frame && frame.code !== "rate_limited") {
      // An edit, delete or reaction the room refused: drop it and say why.
      if (frame.ref === this.inflight) this.inflight = null;
      this.pending.delete(item.id);
      this.savePending();
      this.emit("notice", { code: frame.code, message: frame.message });
      this.pump();
      return;
    }
    if (item) {
      if (frame.ref === this.inflight) this.inflight = null;
      if (frame.code === "rate_limited") {
        item.state = "queued"; // not processed: it goes again, first, a little later
        item.error = "rate_limited";
        const pause = Math.min(RATE_LIMITED_MAX_MS, RATE_LIMITED_RETRY_MS * 2 ** this.slowdowns++);
        this.pausedUntil = Date.now() + pause;
        setTimeout(() => this.pump(), pause);
      } else {
        item.state = "failed";
        item.error = frame.code;
      }
      this.emit("pending");
      this.pump();
      return;
    }
    if (frame.ref && frame.ref === this.historyRef) {
      this.historyRef = null;
      if (frame.code === "rate_limited") setTimeout(() => this.loadOlder(), RATE_LIMITED_RETRY_MS);
      return;
    }
    if (frame.code === "rate_limited") {
      this.signalAt = Date.now() + SIGNAL_PAUSE_MS; // a typing signal: hold the next ones back
      return;
    }
    if (frame.code === "room_full") {
      // A hello into a room that filled up after the upgrade; the room closes the socket next.
      this.refusal = { status: 403, code: frame.code, message: frame.message };
      return;
    }
    this.emit("notice", { code: frame.code, message: frame.message });
  }

  // ------------------------------------------------------------------ what the page asks

  send(body) {
    const item = { id: newId(), body, state: "queued" };
    this.pending.set(item.id, item);
    this.savePending();
    this.pump();
    return item.id;
  }

  // Send the oldest queued message, if none is awaiting its ack.
  pump() {
    if (this.state !== "online" || this.inflight || Date.now() < this.pausedUntil) return;
    const item = [...this.pending.values()].find((i) => i.state === "queued");
    if (!item) return;
    item.state = "sending";
    item.error = null;
    this.inflight = item.id;
    this.ws.send(JSON.stringify(item.frame ?? { type: "publish", id: item.id, body: item.body }));
    this.emit("pending");
  }

  // An edit, delete or reaction: {type, target, ...}. Queued behind earlier messages, so it
  // never overtakes the message it acts on, and retransmitted under the same id.
  act(frame) {
    const id = newId();
    this.pending.set(id, { id, frame: { ...frame, id }, state: "queued" });
    this.savePending();
    this.pump();
  }

  // Everything up to `seq` has been read here; the room tells this user's other tabs.
  markRead(seq) {
    if (this.state !== "online" || seq <= this.readSent) return;
    this.readSent = seq;
    this.ws.send(JSON.stringify({ type: "read", seq }));
  }

  retry(id) {
    const item = this.pending.get(id);
    if (item?.state === "failed") {
      item.state = "queued";
      item.error = null;
      this.emit("pending");
      this.pump();
    }
  }

  discard(id) {
    if (this.pending.delete(id)) this.savePending();
  }

  savePending() {
    const items = [...this.pending.values()].map(({ id, body, frame }) => ({ id, body, frame }));
    sessionStorage.setItem(this.storageKey, JSON.stringify(items));
    this.emit("pending");
  }

  loadOlder() {
    if (this.state !== "online" || this.historyRef || this.historyDone) return;
    if (this.oldest <= 1) {
      this.historyDone = true;
      this.emit("history", { messages: [], done: true, missing: [] });
      return;
    }
    this.historyRef = `h${newId()}`;
    const request = { type: "history", before: this.oldest, limit: HISTORY_PAGE, ref: this.historyRef, fold: true };
    this.ws.send(JSON.stringify(request));
  }

  // Signals are state ("typing" or not): one that comes too soon after the last waits, and a
  // newer one of the same kind replaces it, so a burst of them costs one frame a second.
  signal(kind, data) {
    if (this.state !== "online") return;
    this.signals.set(kind, data);
    this.flushSignals();
  }

  cancelSignal(kind) {
    this.signals.delete(kind);
  }

  flushSignals() {
    clearTimeout(this.signalTimer);
    if (this.state !== "online") {
      this.signals.clear();
      return;
    }
    const wait = this.signalAt - Date.now();
    if (wait > 0) {
      if (this.signals.size > 0) this.signalTimer = setTimeout(() => this.flushSignals(), wait);
      return;
    }
    const [first] = this.signals;
    if (!first) return;
    const [kind, data] = first;
    this.signals.delete(kind);
    this.signalAt = Date.now() + SIGNAL_EVERY_MS;
    this.ws.send(JSON.stringify({ type: "signal", kind, data }));
    if (this.signals.size > 0) this.signalTimer = setTimeout(() => this.flushSignals(), SIGNAL_EVERY_MS);
  }
}
