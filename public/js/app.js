// The chat page: join form, message log, outbox, presence, typing, connection state.
// Every text from the network goes into the page with textContent, never as HTML.

import { RoomConnection } from "./room.js";
import { AuthError, adoptLinkToken, ensureIdentity, forgetIdentity, lastName, storedIdentity } from "./identity.js";

const ROOM_NAME = /^[A-Za-z0-9._-]{1,64}$/;
const TYPING_SEND_EVERY_MS = 3_000;
const TYPING_SHOWN_MS = 5_000;
const GROUP_WITHIN_MS = 5 * 60 * 1000;
const DEFAULT_MAX_BODY_CHARS = 4000; // until the welcome says the room's (docs/protocol.md)
const COUNT_FROM = 0.9; // the character counter shows from this share of the limit
// http(s) URLs in message text; trailing punctuation is trimmed off separately.
const URL_IN_TEXT = /\bhttps?:\/\/[^\s<>"]+/gi;
const REACTIONS = ["👍", "❤️", "😂", "🎉", "😮"]; // the palette; any emoji shown when others use it
const READ_AFTER_MS = 400; // activity marks what is shown as read, at most this often

const $ = (selector) => document.querySelector(selector);
const ui = {
  joinPage: $("#join-page"),
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
  counter: $("#counter"),
  send: $("#composer button[type=submit]"),
  unread: $("#unread"),
};

let conn = null;
let me = null; // {user_id, name, ...}
let members = new Map(); // user_id -> name
const typers = new Map(); // user_id -> shown until (ms)
let lastTypingSent = 0;
let statusTimer = null;
// Messages on screen as they are now: seq -> {m, li, edits, deleted, reactions: emoji -> {count, mine}}
const shown = new Map();
let readSeq = 0; // this user's read-up-to seq in the room (the room keeps it, docs/protocol.md)
let unread = 0; // messages from others after it: the room's count, kept up to date here
let unreadCounted = 0; // messages up to this seq are in `unread` already (the room counted them)
const PLACEHOLDER = "Message (Enter to send, Shift+Enter for a new line)";

const timeFormat = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit" });
const dateFormat = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "short" });
const dayFormat = new Intl.DateTimeFormat(undefined, { dateStyle: "full" });
const countFormat = new Intl.NumberFormat();

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

// Text written by people: its direction comes from its own first strong character, so Hebrew
// or Arabic reads right to left with its punctuation in place, inside a left-to-right page.
function userText(tag, className, text) {
  const node = el(tag, className, text);
  node.dir = "auto";
  return node;
}

// A message body: text nodes, and anchors for http(s) URLs (checked by the URL parser, opened
// in a new tab with no access back to this page and no referrer). Never parsed as HTML.
function bodyNode(text) {
  const p = userText("p", "body");
  let done = 0;
  for (const match of text.matchAll(URL_IN_TEXT)) {
    const raw = trimUrl(match[0]);
    let url;
    try {
      url = new URL(raw);
    } catch {
      continue;
    }
    if (url.protocol !== "http:" && url.protocol !== "https:") continue;
    if (match.index > done) p.append(text.slice(done, match.index));
    const a = el("a", "", raw);
    a.href = url.href;
    a.rel = "noopener noreferrer";
    a.target = "_blank";
    p.append(a);
    done = match.index + raw.length;
  }
  if (done < text.length) p.append(text.slice(done));
  return p;
}

// "See https://example.com/x." links the URL, not the full stop; a closing parenthesis stays
// when the URL opened one (https://en.wikipedia.org/wiki/Rust_(language)).
function trimUrl(raw) {
  let url = raw;
  for (;;) {
    const last = url.at(-1);
    if (".,;:!?'*".includes(last)) url = url.slice(0, -1);
    else if (last === ")" && url.split("(").length < url.split(")").length) url = url.slice(0, -1);
    else return url;
  }
}

function renderTitle() {
  const base = conn ? `#${conn.room} · durable-rooms` : "durable-rooms";
  document.title = unread > 0 ? `(${unread}) ${base}` : base;
  ui.unread.hidden = !conn || unread === 0;
  ui.unread.textContent = `${unread} unread · mark read`;
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
  ui.joinPage.hidden = false;
  ui.joinRoom.value = room ?? ui.joinRoom.value ?? "";
  ui.joinName.value = storedIdentity()?.name ?? (ui.joinName.value || lastName());
  ui.joinError.textContent = error;
  (ui.joinRoom.value ? ui.joinName : ui.joinRoom).focus();
  unread = 0;
  renderTitle();
}

function join(room, name) {
  conn?.leave();
  history.replaceState(null, "", roomLink(room));
  ui.joinPage.hidden = true;
  ui.chat.hidden = false;
  ui.title.textContent = `#${room}`;
  ui.log.replaceChildren();
  ui.outbox.replaceChildren();
  shown.clear();
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
  conn.addEventListener("event", ({ detail }) => onEvent(detail));
  conn.addEventListener("read", ({ detail }) => onRead(detail));
  conn.addEventListener("history", ({ detail }) => prependHistory(detail));
  conn.addEventListener("pending", renderOutbox);
  conn.addEventListener("presence", ({ detail }) => onPresence(detail));
  conn.addEventListener("signal", ({ detail }) => onSignal(detail));
  conn.addEventListener("notice", ({ detail }) => showNotice(detail));
  conn.addEventListener("refused", ({ detail }) => showNotice({ ...detail, refused: true }));
  unread = 0;
  renderTitle();
  conn.open();
  renderOutbox();
  renderCounter();
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
  if (document.visibilityState !== "visible") return;
  conn?.retryNow();
  noteActivity(); // coming back to the tab reads what it shows
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
  renderCounter();
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
  ui.older.disabled = state !== "online" || ui.older.dataset.state !== "idle";
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
        not_author: "Only the author can change that message.",
        target_deleted: "That message was deleted.",
        target_not_retained: "That message is too old to change.",
        too_many_edits: "That message cannot be edited any more.",
        too_many_reactions: "That message has as many different reactions as it can take.",
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
    shown.clear();
    setOlder("idle");
    stickToBottom = true;
  }
  readSeq = welcome.read ?? 0;
  unreadCounted = welcome.head;
  setUnread(welcome.unread ?? 0);
  placeMarker();
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
  const reactions = new Map((m.reactions ?? []).map((r) => [r.emoji, { count: r.count, mine: r.mine }]));
  shown.set(m.seq, { m, li, edits: m.edits ?? 0, deleted: Boolean(m.deleted), reactions });
  renderMessage(m.seq);
  return li;
}

// The message's content as it is now: body or "deleted", "edited", reactions, and its actions.
function renderMessage(seq) {
  const state = shown.get(seq);
  const { m, li } = state;
  const mine = m.user_id === me?.user_id;
  const meta = el("div", "meta");
  const who = el("span", "who");
  who.append(userText("bdi", "", m.name), ...(mine ? [" (you)"] : []));
  meta.append(who);
  const time = el("time", "", timeFormat.format(m.sent_ms));
  time.dateTime = new Date(m.sent_ms).toISOString();
  time.title = dateFormat.format(m.sent_ms);
  meta.append(time);
  if (state.edits > 0 && !state.deleted) meta.append(el("span", "edited", "edited"));
  li.classList.toggle("deleted", state.deleted);
  const body = state.deleted ? el("p", "body", "This message was deleted.") : bodyNode(m.body);
  li.replaceChildren(meta, body);
  if (state.deleted) return;
  const chips = el("div", "reactions");
  for (const [emoji, r] of state.reactions) {
    const chip = el("button", r.mine ? "chip mine" : "chip", `${emoji} ${r.count}`);
    chip.type = "button";
    chip.setAttribute("aria-pressed", String(r.mine));
    chip.setAttribute("aria-label", `${emoji} ${r.count}${r.mine ? ", yours: remove" : ": add yours"}`);
    chip.addEventListener("click", () => react(seq, emoji, r.mine));
    chips.append(chip);
  }
  const actions = el("div", "msg-actions");
  const add = el("button", "link", "React");
  add.type = "button";
  add.setAttribute("aria-expanded", "false");
  add.title = "Add a reaction";
  const palette = el("div", "palette");
  palette.hidden = true;
  for (const emoji of REACTIONS) {
    const pick = el("button", "chip", emoji);
    pick.type = "button";
    pick.setAttribute("aria-label", `React with ${emoji}`);
    pick.addEventListener("click", () => react(seq, emoji, state.reactions.get(emoji)?.mine ?? false));
    palette.append(pick);
  }
  palette.addEventListener("keydown", (event) => {
    if (event.key === "Escape") {
      palette.hidden = true;
      add.setAttribute("aria-expanded", "false");
      add.focus();
    }
  });
  add.addEventListener("click", () => {
    palette.hidden = !palette.hidden;
    add.setAttribute("aria-expanded", String(!palette.hidden));
    if (!palette.hidden) palette.firstElementChild.focus();
  });
  actions.append(add);
  if (mine) {
    const edit = el("button", "link", "Edit");
    edit.type = "button";
    edit.addEventListener("click", () => startEdit(seq));
    const remove = el("button", "link", "Delete");
    remove.type = "button";
    remove.addEventListener("click", () => {
      if (confirm("Delete this message for everyone?")) conn?.act({ type: "delete", target: seq });
    });
    actions.append(edit, remove);
  }
  li.append(chips, actions, palette);
}

function react(seq, emoji, remove) {
  conn?.act({ type: "react", target: seq, emoji, remove });
}

// Edit in place: Enter saves, Shift+Enter is a new line, Escape cancels.
function startEdit(seq) {
  const { m, li } = shown.get(seq);
  const box = el("textarea", "edit-box");
  box.value = m.body;
  box.setAttribute("aria-label", "Edit message");
  box.maxLength = 4000;
  const done = (save) => {
    const text = box.value;
    if (save && text.trim() && text !== m.body) conn?.act({ type: "edit", target: seq, body: text });
    renderMessage(seq);
    li.querySelector(".msg-actions button:nth-child(2)")?.focus();
  };
  box.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      done(true);
    } else if (event.key === "Escape") {
      event.preventDefault();
      done(false);
    }
  });
  li.querySelector(".body").replaceWith(box);
  box.focus();
  box.setSelectionRange(box.value.length, box.value.length);
}

// An edit, delete or reaction: applied to the message it targets when it is on screen (a
// history page that brings it later has it folded in already).
function onEvent(event) {
  const state = shown.get(event.target);
  if (!state) return;
  if (event.kind === "edit") {
    state.m = { ...state.m, body: event.body };
    state.edits += 1;
  } else if (event.kind === "delete") {
    state.deleted = true;
    state.reactions.clear();
    if (event.target > readSeq && state.m.user_id !== me?.user_id) {
      setUnread(Math.max(0, unread - 1)); // a deleted message is nothing to read
      renderMessage(event.target);
      placeMarker();
      return;
    }
  } else if (event.kind === "react" || event.kind === "unreact") {
    const r = state.reactions.get(event.emoji) ?? { count: 0, mine: false };
    const mineToo = event.user_id === me?.user_id;
    r.count += event.kind === "react" ? 1 : -1;
    if (mineToo) r.mine = event.kind === "react";
    if (r.count > 0) state.reactions.set(event.emoji, r);
    else state.reactions.delete(event.emoji);
  } else {
    return; // a kind this page does not know changes nothing
  }
  renderMessage(event.target);
}

// The local date, YYYY-MM-DD: a key and a <time datetime>.
function dayOf(ms) {
  const d = new Date(ms);
  const pad = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}`;
}

function daySeparator(ms) {
  const now = new Date();
  const yesterday = new Date(now.getFullYear(), now.getMonth(), now.getDate() - 1);
  const day = dayOf(ms);
  const label =
    day === dayOf(now.getTime()) ? "Today" : day === dayOf(yesterday.getTime()) ? "Yesterday" : dayFormat.format(ms);
  const li = el("li", "day");
  const time = el("time", "", label);
  time.dateTime = day;
  li.append(time);
  li.dataset.day = day;
  return li;
}

// A separator before the first message of each day (local time), wherever messages were added.
function placeDaySeparators() {
  for (const old of ui.log.querySelectorAll("li.day")) old.remove();
  let previous = null;
  for (const li of [...ui.log.querySelectorAll("li.msg")]) {
    const day = dayOf(Number(li.dataset.sent));
    if (day !== previous) li.before(daySeparator(Number(li.dataset.sent)));
    previous = day;
  }
}

// ---------------------------------------------------------------------- read state

function setUnread(count) {
  unread = count;
  renderTitle();
}

// The "New messages" line (drawn by CSS) goes above the first unread message from someone else.
function placeMarker() {
  for (const li of ui.log.querySelectorAll(".first-unread")) li.classList.remove("first-unread");
  if (unread === 0) return;
  const first = [...shown.values()].filter((s) => s.m.seq > readSeq && s.m.user_id !== me?.user_id && !s.deleted)
    .sort((a, b) => a.m.seq - b.m.seq)[0];
  first?.li.classList.add("first-unread");
}

// Another tab of this user (or this one) read up to `seq`.
function onRead({ seq, unread: count }) {
  readSeq = Math.max(readSeq, seq);
  unreadCounted = Math.max(unreadCounted, conn?.head ?? 0); // the room counted what we hold
  setUnread(count);
  placeMarker();
}

// What is on screen counts as read when the tab is visible and shows the newest messages and the
// person does something here (a key, a click, a scroll), comes back to the tab, or a message
// arrives as they look. Messages arriving in a hidden tab stay unread.
let readTimer = null;
function noteActivity() {
  if (!conn || conn.state !== "online" || !nearBottom() || document.visibilityState !== "visible") return;
  clearTimeout(readTimer);
  readTimer = setTimeout(() => {
    if (conn?.head > readSeq && unread > 0) conn.markRead(conn.head);
  }, READ_AFTER_MS);
}

ui.unread.addEventListener("click", () => {
  if (conn?.head) conn.markRead(conn.head);
  scrollToBottom();
});
for (const type of ["keydown", "pointerdown"]) ui.chat.addEventListener(type, noteActivity);

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

function lastMessage() {
  let li = ui.log.lastElementChild;
  while (li && !li.classList.contains("msg")) li = li.previousElementSibling;
  return li;
}

function appendMessages(messages) {
  const follow = nearBottom() || messages.some((m) => m.user_id === me?.user_id);
  for (const m of messages) {
    const last = lastMessage();
    if (!last || dayOf(Number(last.dataset.sent)) !== dayOf(m.sent_ms)) ui.log.append(daySeparator(m.sent_ms));
    const li = messageItem(m);
    ui.log.append(li);
    regroup(li);
    typers.delete(m.user_id);
    if (m.seq > unreadCounted && m.seq > readSeq && m.user_id !== me?.user_id) {
      setUnread(unread + 1);
      if (!ui.log.querySelector(".first-unread")) placeMarker();
    }
  }
  renderTyping();
  if (follow) scrollToBottom();
  else ui.jump.hidden = false;
  noteActivity(); // read at once when someone is looking
}

function prependHistory({ messages, done, missing }) {
  const first = ui.log.firstElementChild;
  const fromBottom = ui.scroller.scrollHeight - ui.scroller.scrollTop;
  const items = messages.map(messageItem);
  const gaps = missing.reduce((n, [a, b]) => n + (b - a + 1), 0);
  if (gaps > 0) items.unshift(el("li", "gap", `${gaps} older message${gaps > 1 ? "s" : ""} could not be loaded.`));
  ui.log.prepend(...items);
  placeDaySeparators();
  items.forEach(regroup);
  regroup(first);
  if (stickToBottom) {
    scrollToBottom();
    stickToBottom = false;
  } else {
    ui.scroller.scrollTop = ui.scroller.scrollHeight - fromBottom; // keep what the reader sees
  }
  setOlder(done ? "done" : "idle");
  placeMarker();
  requestAnimationFrame(maybeLoadOlder);
}

function setOlder(state) {
  ui.older.dataset.state = state;
  ui.older.disabled = state !== "idle" || conn?.state !== "online";
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
ui.scroller.addEventListener("wheel", noteActivity, { passive: true });
ui.jump.addEventListener("click", scrollToBottom);

// ---------------------------------------------------------------------- the outbox

const PENDING_TEXT = {
  queued: "Waiting to send…", // behind an earlier message: they go one at a time
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
  const items = [...conn.pending.values()].filter((item) => !item.frame).map((item) => {
    let state = item.state;
    if (state !== "failed" && conn.state !== "online") state = "offline";
    else if (state === "queued" && item.error === "rate_limited") state = "retrying";
    const li = el("li", "msg mine pending");
    li.dataset.id = item.id;
    li.dataset.state = state;
    li.append(bodyNode(item.body));
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

function maxBodyChars() {
  return conn?.maxBodyChars || DEFAULT_MAX_BODY_CHARS;
}

// Code points, as the room counts them (an emoji is one, not two UTF-16 units).
function charCount(text) {
  let n = 0;
  for (const _ of text) n += 1;
  return n;
}

// Near the limit a counter shows; over it the message is refused here, never cut short.
function renderCounter() {
  const n = charCount(ui.body.value);
  const limit = maxBodyChars();
  const over = n > limit;
  ui.counter.hidden = n < limit * COUNT_FROM;
  ui.counter.classList.toggle("over", over);
  ui.counter.textContent = over
    ? `${countFormat.format(n - limit)} too many characters (at most ${countFormat.format(limit)})`
    : `${countFormat.format(n)} / ${countFormat.format(limit)}`;
  const closed = conn?.state === "stopped" || conn?.state === "refused";
  ui.send.disabled = closed || over;
  ui.body.setAttribute("aria-invalid", String(over));
}

// The message itself ends the sender's typing on every other screen: no signal goes with it.
function send() {
  const body = ui.body.value;
  if (!body.trim() || !conn || conn.state === "stopped" || conn.state === "refused") return;
  if (charCount(body) > maxBodyChars()) return; // the counter says why
  conn.send(body);
  conn.cancelSignal("typing"); // a "typing" still waiting for its turn would come after this
  ui.body.value = "";
  lastTypingSent = 0; // typing the next one shows again (RoomConnection.signal paces them)
  renderCounter();
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
  renderCounter();
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
    const li = el("li", id === me?.user_id ? "me" : "");
    li.append(userText("bdi", "", name), ...(id === me?.user_id ? [" (you)"] : []));
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
  const names = [...typers.keys()].map((id) => userText("bdi", "", members.get(id) ?? "Someone"));
  const parts =
    names.length === 0 ? [] :
    names.length === 1 ? [names[0], " is typing…"] :
    names.length === 2 ? [names[0], " and ", names[1], " are typing…"] :
    ["Several people are typing…"];
  const text = parts.map((part) => (typeof part === "string" ? part : part.textContent)).join("");
  if (ui.typing.textContent !== text) ui.typing.replaceChildren(...parts); // announced once
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
