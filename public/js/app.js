// The chat page: join form, message log, outbox, presence, typing, connection state.
// Every text from the network goes into the page with textContent, never as HTML.

import { RoomConnection } from "./room.js";
import { AuthError, adoptLinkToken, ensureIdentity, forgetIdentity, lastName, storedIdentity } from "./identity.js";

const ROOM_NAME = /^[A-Za-z0-9._-]{1,64}$/;
const TYPING_SEND_EVERY_MS = 3_000;
const TYPING_SHOWN_MS = 5_000;
const GROUP_WITHIN_MS = 5 * 60 * 1000;

const $ = (selector) => document.querySelector(selector);
const ui = {
  join: $("#join"),
  joinRoom: $("#join-room"),
  joinName: $("#join-name"),
  joinError: $("#join-error"),
  chat: $("#chat"),
  title: $("#room-title"),
  status: $("#status"),
  statusText: $("#status-text"),
  retry: $("#retry"),
  share: $("#share"),
  leave: $("#leave"),
  notice: $("#notice"),
  noticeText: $("#notice-text"),
  scroller: $("#scroller"),
  older: $("#older"),
  log: $("#log"),
  outbox: $("#outbox"),
  jump: $("#jump"),
  peopleCount: $("#people-count"),
  people: $("#people-list"),
  typing: $("#typing"),
  composer: $("#composer"),
  body: $("#body"),
};

let conn = null;
let me = null; // {user_id, name, ...}
let members = new Map(); // user_id -> name
const typers = new Map(); // user_id -> shown until (ms)
let lastTypingSent = 0;
let statusTimer = null;
const PLACEHOLDER = "Message (Enter to send, Shift+Enter for a new line)";

const timeFormat = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit" });
const dateFormat = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "short" });

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

// ---------------------------------------------------------------------- the room link

function linkParams() {
  const hash = new URLSearchParams(location.hash.slice(1));
  const query = new URLSearchParams(location.search);
  return { room: hash.get("room") ?? query.get("room"), token: hash.get("token") };
}

function roomLink(room) {
  return `${location.origin}${location.pathname}#room=${encodeURIComponent(room)}`;
}

// ---------------------------------------------------------------------- joining

function showJoin(room, error = "") {
  conn?.leave();
  conn = null;
  ui.chat.hidden = true;
  ui.join.hidden = false;
  ui.joinRoom.value = room ?? ui.joinRoom.value ?? "";
  ui.joinName.value = storedIdentity()?.name ?? (ui.joinName.value || lastName());
  ui.joinError.textContent = error;
  (ui.joinRoom.value ? ui.joinName : ui.joinRoom).focus();
  document.title = "durable-rooms";
}

function join(room, name) {
  conn?.leave();
  history.replaceState(null, "", roomLink(room));
  document.title = `#${room} · durable-rooms`;
  ui.join.hidden = true;
  ui.chat.hidden = false;
  ui.title.textContent = `#${room}`;
  ui.log.replaceChildren();
  ui.outbox.replaceChildren();
  hideNotice();
  members = new Map();
  typers.clear();
  renderPeople();
  renderTyping();
  setOlder("idle");

  conn = new RoomConnection(room, async (force) => {
    me = await ensureIdentity(name, { force });
    return me.token;
  });
  me = storedIdentity();
  conn.addEventListener("state", ({ detail }) => renderStatus(detail));
  conn.addEventListener("welcome", ({ detail }) => onWelcome(detail));
  conn.addEventListener("message", ({ detail }) => appendMessages([detail]));
  conn.addEventListener("history", ({ detail }) => prependHistory(detail));
  conn.addEventListener("pending", renderOutbox);
  conn.addEventListener("presence", ({ detail }) => onPresence(detail));
  conn.addEventListener("signal", ({ detail }) => onSignal(detail));
  conn.addEventListener("notice", ({ detail }) => showNotice(detail));
  conn.addEventListener("refused", ({ detail }) => showNotice({ ...detail, refused: true }));
  conn.open();
  renderOutbox();
  ui.body.focus();
}

ui.join.addEventListener("submit", (event) => {
  event.preventDefault();
  const room = ui.joinRoom.value.trim();
  const name = ui.joinName.value.trim().replace(/\s+/g, " ");
  if (!ROOM_NAME.test(room)) {
    ui.joinError.textContent = "Room names are 1–64 letters, digits, dots, dashes or underscores.";
    ui.joinRoom.focus();
    return;
  }
  if (!name) {
    ui.joinError.textContent = "Pick a display name.";
    ui.joinName.focus();
    return;
  }
  join(room, name);
});

ui.leave.addEventListener("click", () => {
  const room = conn?.room;
  history.replaceState(null, "", location.pathname);
  showJoin(room);
});

ui.share.addEventListener("click", async () => {
  const link = roomLink(conn.room);
  try {
    await navigator.clipboard.writeText(link);
    ui.share.textContent = "Link copied";
  } catch {
    prompt("Share this link:", link);
  }
  setTimeout(() => (ui.share.textContent = "Copy link"), 2000);
});

window.addEventListener("hashchange", () => {
  const { room } = linkParams();
  if (room && ROOM_NAME.test(room) && room !== conn?.room && me) join(room, me.name);
});
window.addEventListener("online", () => conn?.retryNow());
document.addEventListener("visibilitychange", () => {
  if (document.visibilityState === "visible") conn?.retryNow();
});

// ---------------------------------------------------------------------- connection state

const STATUS_TEXT = {
  idle: "Not connected",
  connecting: "Connecting…",
  online: "Connected",
  stopped: "Disconnected",
  refused: "Not admitted",
};

function renderStatus({ state, retryAt }) {
  clearInterval(statusTimer);
  ui.status.dataset.state = state;
  ui.retry.hidden = !["waiting", "stopped", "refused"].includes(state);
  ui.retry.textContent = { stopped: "Reconnect", refused: "Try again" }[state] ?? "Retry now";
  ui.composer.dataset.state = state;
  // Nothing typed now could be sent: a stopped or refused page says so instead of queueing.
  const closed = state === "stopped" || state === "refused";
  ui.body.disabled = closed;
  ui.composer.querySelector("button[type=submit]").disabled = closed;
  ui.body.placeholder = closed ? "You are not in this room" : PLACEHOLDER;
  ui.older.hidden = state === "refused"; // there is no history to load for who is not let in
  if (state !== "online") {
    members = new Map(); // not connected: nobody is shown as present (the welcome brings them)
    typers.clear();
    renderPeople();
    renderTyping();
  }
  if (state === "waiting") {
    const tick = () => {
      const seconds = Math.max(0, Math.ceil((retryAt - Date.now()) / 1000));
      ui.statusText.textContent = `Offline · retrying in ${seconds} s`;
    };
    tick();
    statusTimer = setInterval(tick, 1000);
  } else {
    ui.statusText.textContent = STATUS_TEXT[state] ?? state;
  }
  if (state === "online") {
    hideNotice("refused");
    hideNotice("policy");
  }
  if (ui.older.dataset.state === "loading" && !conn?.historyRef) setOlder("idle"); // lost in a drop
  renderOutbox();
}

ui.retry.addEventListener("click", () => conn?.retryNow());

// Why the room refused this page, in words a person can act on (codes: docs/protocol.md).
const REFUSAL_TEXT = {
  room_full: "This room is full: it has as many people as it allows. Try again later.",
  banned: "An operator has banned you from this room for a while.",
  too_many_sockets: "You have this room open in too many tabs. Close some, then try again.",
  token_invalid: "Your sign-in was not issued by this server (a token signed with another secret). Get a new link or token.",
  token_expired: "Your sign-in has expired. Get a new link or token.",
  token_claims: "Your sign-in token is missing what this server requires (user, expiry, audience or issuer).",
  token_missing: "No sign-in token was sent.",
  origin_not_allowed: "This server does not accept pages from this site.",
  bad_room_name: "That is not a valid room name.",
};

function showNotice({ code, message, refused = false }) {
  const text = refused
    ? `${REFUSAL_TEXT[code] ?? `The server refused to open this room: ${message || code}.`} (${code})`
    : {
        guest_tokens_disabled:
          "This server hands out no guest tokens. Open the chat through a link that carries a token.",
        rate_limited: "Too many sign-ins from your network. Retrying shortly…",
        unreachable: "Can't reach the server. Retrying…",
        room_closed: "The room is closed to new messages.",
      }[code];
  ui.notice.dataset.code = refused ? "refused" : code;
  ui.noticeText.textContent = text ?? message ?? code;
  ui.notice.hidden = false;
  if (code === "guest_tokens_disabled" || code === "token_expired") forgetIdentity();
}

function hideNotice(code) {
  if (!code || ui.notice.dataset.code === code) ui.notice.hidden = true;
}

$("#notice-close").addEventListener("click", () => hideNotice());

// ---------------------------------------------------------------------- messages

function onWelcome({ welcome, reset }) {
  me = { ...storedIdentity(), user_id: welcome.user_id };
  if (reset) {
    ui.log.replaceChildren();
    setOlder("idle");
    stickToBottom = true;
  }
}

let stickToBottom = true;

function nearBottom() {
  const { scrollTop, scrollHeight, clientHeight } = ui.scroller;
  return scrollHeight - scrollTop - clientHeight < 48;
}

function scrollToBottom() {
  ui.scroller.scrollTop = ui.scroller.scrollHeight;
  ui.jump.hidden = true;
}

function messageItem(m) {
  const mine = m.user_id === me?.user_id;
  const li = el("li", mine ? "msg mine" : "msg");
  li.dataset.seq = m.seq;
  li.dataset.user = m.user_id;
  li.dataset.sent = m.sent_ms;
  const meta = el("div", "meta");
  meta.append(el("span", "who", mine ? `${m.name} (you)` : m.name));
  const time = el("time", "", timeFormat.format(m.sent_ms));
  time.dateTime = new Date(m.sent_ms).toISOString();
  time.title = dateFormat.format(m.sent_ms);
  meta.append(time);
  li.append(meta, el("p", "body", m.body));
  return li;
}

// Consecutive messages from one sender within a few minutes share one header.
function regroup(li) {
  if (!li?.classList.contains("msg")) return;
  const prev = li.previousElementSibling;
  const same =
    prev?.classList.contains("msg") &&
    prev.dataset.user === li.dataset.user &&
    li.dataset.sent - prev.dataset.sent < GROUP_WITHIN_MS;
  li.classList.toggle("cont", Boolean(same));
}

function appendMessages(messages) {
  const follow = nearBottom() || messages.some((m) => m.user_id === me?.user_id);
  for (const m of messages) {
    const li = messageItem(m);
    ui.log.append(li);
    regroup(li);
    typers.delete(m.user_id);
  }
  renderTyping();
  if (follow) scrollToBottom();
  else ui.jump.hidden = false;
}

function prependHistory({ messages, done, missing }) {
  const first = ui.log.firstElementChild;
  const fromBottom = ui.scroller.scrollHeight - ui.scroller.scrollTop;
  const items = messages.map(messageItem);
  const gaps = missing.reduce((n, [a, b]) => n + (b - a + 1), 0);
  if (gaps > 0) items.unshift(el("li", "gap", `${gaps} older message${gaps > 1 ? "s" : ""} could not be loaded.`));
  ui.log.prepend(...items);
  items.forEach(regroup);
  regroup(first);
  if (stickToBottom) {
    scrollToBottom();
    stickToBottom = false;
  } else {
    ui.scroller.scrollTop = ui.scroller.scrollHeight - fromBottom; // keep what the reader sees
  }
  setOlder(done ? "done" : "idle");
  requestAnimationFrame(maybeLoadOlder);
}

function setOlder(state) {
  ui.older.dataset.state = state;
  ui.older.disabled = state !== "idle";
  ui.older.textContent = {
    idle: "Load older messages",
    loading: "Loading…",
    done: `This is the beginning of ${ui.title.textContent}`,
  }[state];
}

function loadOlder() {
  if (!conn || conn.state !== "online" || ui.older.dataset.state !== "idle") return;
  setOlder("loading");
  conn.loadOlder();
  if (!conn.historyRef && !conn.historyDone) setOlder("idle");
}

function maybeLoadOlder() {
  if (ui.scroller.scrollTop < 120) loadOlder();
}

ui.older.addEventListener("click", loadOlder);
ui.scroller.addEventListener("scroll", () => {
  maybeLoadOlder();
  if (nearBottom()) ui.jump.hidden = true;
});
ui.jump.addEventListener("click", scrollToBottom);

// ---------------------------------------------------------------------- the outbox

const PENDING_TEXT = {
  queued: "Sending…",
  sending: "Sending…",
  sent: "Sending…",
  retrying: "Slowing down, retrying…",
  offline: "Waiting for the connection…",
};

const FAILURE_TEXT = {
  room_closed: "Not sent: the room is closed to new messages.",
  body_too_long: "Not sent: the message is too long.",
};

function renderOutbox() {
  if (!conn) return;
  const follow = nearBottom();
  const items = [...conn.pending.values()].map((item) => {
    let state = item.state;
    if (state !== "failed" && conn.state !== "online") state = "offline";
    else if (state === "queued" && item.error === "rate_limited") state = "retrying";
    const li = el("li", "msg mine pending");
    li.dataset.id = item.id;
    li.dataset.state = state;
    li.append(el("p", "body", item.body));
    const line = el("div", "pending-state");
    if (state === "failed") {
      line.append(el("span", "", FAILURE_TEXT[item.error] ?? `Not sent (${item.error}).`));
      const retry = el("button", "link", "Retry");
      retry.type = "button";
      retry.addEventListener("click", () => conn.retry(item.id));
      const discard = el("button", "link", "Discard");
      discard.type = "button";
      discard.addEventListener("click", () => conn.discard(item.id));
      line.append(retry, discard);
    } else {
      line.append(el("span", "", PENDING_TEXT[state]));
    }
    li.append(line);
    return li;
  });
  ui.outbox.replaceChildren(...items);
  if (follow) scrollToBottom();
}

// ---------------------------------------------------------------------- composing

// The message itself ends the sender's typing on every other screen: no signal goes with it.
function send() {
  const body = ui.body.value;
  if (!body.trim() || !conn || conn.state === "stopped" || conn.state === "refused") return;
  conn.send(body);
  conn.cancelSignal("typing"); // a "typing" still waiting for its turn would come after this
  ui.body.value = "";
  lastTypingSent = 0; // typing the next one shows again (RoomConnection.signal paces them)
  scrollToBottom();
}

ui.composer.addEventListener("submit", (event) => {
  event.preventDefault();
  send();
  ui.body.focus();
});

ui.body.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    send();
  }
});

// "Typing" goes out at most every few seconds while there is text, however fast one types and
// sends; "stopped typing" only when the box is emptied without sending.
ui.body.addEventListener("input", () => {
  const now = Date.now();
  if (ui.body.value.trim()) {
    if (now - lastTypingSent > TYPING_SEND_EVERY_MS) {
      conn?.signal("typing", { typing: true });
      lastTypingSent = now;
    }
  } else if (lastTypingSent) {
    conn?.signal("typing", { typing: false });
    lastTypingSent = 0;
  }
});

// ---------------------------------------------------------------------- presence and typing

// The welcome brings everyone present ({members}); after it, one change per frame ({event, member}).
function onPresence({ members: list, event, member }) {
  if (list) members = new Map(list.map((m) => [m.user_id, m.name]));
  else if (event === "join") members.set(member.user_id, member.name);
  else if (event === "leave") members.delete(member.user_id);
  for (const id of typers.keys()) if (!members.has(id)) typers.delete(id);
  renderPeople();
  renderTyping();
}

function renderPeople() {
  const online = conn?.state === "online";
  ui.peopleCount.textContent = online ? `${members.size} here` : "Not connected";
  const order = ([id, name]) => [id === me?.user_id ? 0 : 1, name.toLowerCase()];
  const sorted = [...members].sort((a, b) => {
    const [x, y] = [order(a), order(b)];
    return x[0] - y[0] || x[1].localeCompare(y[1]); // you first, then by name
  });
  const items = sorted.map(([id, name]) => {
    const li = el("li", id === me?.user_id ? "me" : "", id === me?.user_id ? `${name} (you)` : name);
    li.dataset.user = id;
    return li;
  });
  ui.people.replaceChildren(...items);
}

function onSignal({ user_id: userId, kind, data }) {
  if (kind !== "typing" || userId === me?.user_id) return;
  if (data?.typing === false) typers.delete(userId);
  else typers.set(userId, Date.now() + TYPING_SHOWN_MS);
  renderTyping();
}

function renderTyping() {
  const now = Date.now();
  for (const [id, until] of typers) if (until < now) typers.delete(id);
  const names = [...typers.keys()].map((id) => members.get(id) ?? "Someone");
  ui.typing.textContent =
    names.length === 0 ? "" :
    names.length === 1 ? `${names[0]} is typing…` :
    names.length === 2 ? `${names[0]} and ${names[1]} are typing…` :
    "Several people are typing…";
}

setInterval(renderTyping, 1000);

// ---------------------------------------------------------------------- start

function start() {
  if (matchMedia("(max-width: 40rem)").matches) $("#people details").open = false; // phones
  const { room, token } = linkParams();
  if (token) {
    history.replaceState(null, "", room ? roomLink(room) : location.pathname); // not in history
    try {
      adoptLinkToken(token);
    } catch (error) {
      if (!(error instanceof AuthError)) throw error;
      showJoin(room, error.message);
      return;
    }
  }
  const known = storedIdentity();
  if (room && ROOM_NAME.test(room) && known?.name) join(room, known.name);
  else showJoin(room);
}

start();
