// The operator's console: static, no build step, on the admin API alone (docs/admin.md).
// Everything the server sends is shown as text (textContent), never parsed as HTML. The admin
// token lives in this tab's sessionStorage only: never in the URL, gone when the tab closes.

const TOKEN_KEY = "rooms-admin-token";
const REFRESH_MS = 2000;
const PAGE_SIZE = 50;

const $ = (id) => document.getElementById(id);
let refreshTimer = null;
let renderSeq = 0; // a view drawn after the user moved on is dropped

// ------------------------------------------------------------------ DOM helpers (text only)

function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "class") el.className = value;
    else if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
    else el.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

const nf = new Intl.NumberFormat();
const num = (n) => (n === null || n === undefined ? "–" : nf.format(n));
const rtf = new Intl.RelativeTimeFormat(undefined, { numeric: "auto" });

function ago(ms) {
  const s = Math.round((ms - Date.now()) / 1000);
  const abs = Math.abs(s);
  if (abs < 60) return rtf.format(s, "second");
  if (abs < 3600) return rtf.format(Math.round(s / 60), "minute");
  if (abs < 86400) return rtf.format(Math.round(s / 3600), "hour");
  return rtf.format(Math.round(s / 86400), "day");
}

// A time as people read it; the exact UTC instant on hover.
function when(ms, full = false) {
  if (!ms) return h("span", { class: "muted" }, "–");
  const date = new Date(ms);
  // Today: the time alone; earlier: a short date too (the details list shows the full date).
  const today = date.toDateString() === new Date().toDateString();
  const shown = full
    ? date.toLocaleString(undefined, { dateStyle: "medium", timeStyle: "medium" })
    : today ? date.toLocaleTimeString() : date.toLocaleString(undefined, { dateStyle: "short", timeStyle: "short" });
  return h("time", { datetime: date.toISOString(), title: date.toISOString() }, `${shown} (${ago(ms)})`);
}

const plural = (n, one, many = `${one}s`) => `${num(n)} ${n === 1 ? one : many}`;

// An audit entry's result, read as "key: value" with times as dates (it is JSON text).
function detailText(detail) {
  let value;
  try {
    value = JSON.parse(detail ?? "null");
  } catch {
    return detail ?? "";
  }
  if (value === null || typeof value !== "object") return detail ?? "";
  return Object.entries(value).map(([key, v]) =>
    `${key.replace(/_ms$/, "")}: ${key.endsWith("_ms") && typeof v === "number" ? new Date(v).toLocaleString() : JSON.stringify(v)}`).join(", ");
}

function bytes(n) {
  if (n < 1024) return `${nf.format(n)} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / 1024 / 1024).toFixed(1)} MiB`;
}

function stat(label, value, sub, bad = false) {
  return h("div", { class: bad ? "stat bad" : "stat", "data-stat": label },
    h("div", { class: "label" }, label), h("div", { class: "value" }, value),
    sub ? h("div", { class: "sub" }, sub) : null);
}

function table(headers, rows, empty) {
  if (rows.length === 0) return h("div", { class: "table-wrap" }, h("p", { class: "empty" }, empty));
  return h("div", { class: "table-wrap" },
    h("table", {}, h("thead", {}, h("tr", {}, headers.map((x) => (x instanceof Node ? x : h("th", {}, x))))),
      h("tbody", {}, rows)));
}

// ------------------------------------------------------------------ the API

class Unauthorized extends Error {}
class Unreachable extends Error {}

async function api(method, path) {
  let reply;
  try {
    reply = await fetch(path, {
      method,
      headers: { authorization: `Bearer ${sessionStorage.getItem(TOKEN_KEY) ?? ""}` },
      cache: "no-store",
    });
  } catch {
    throw new Unreachable("the server cannot be reached");
  }
  let body = null;
  try {
    body = await reply.json();
  } catch {
    if (reply.status >= 500 || reply.status === 0) throw new Unreachable(`the server answered ${reply.status}`);
  }
  if (reply.status === 401) throw new Unauthorized("the token was refused");
  if (!reply.ok) {
    const error = new Error(body?.error?.message ?? `HTTP ${reply.status}`);
    error.code = body?.error?.code;
    error.status = reply.status;
    throw error;
  }
  if (unreachableShown) setBanner(null); // reachable again
  return body;
}

let unreachableShown = false;

function setBanner(text, tone = "bad", unreachable = false) {
  unreachableShown = unreachable;
  const banner = $("banner");
  banner.hidden = !text;
  banner.textContent = text ?? "";
  banner.className = `banner ${tone}`;
}

// ------------------------------------------------------------------ confirmation

function confirmAction(title, text, extra = []) {
  const dialog = $("confirm");
  $("confirm-title").textContent = title;
  $("confirm-text").textContent = text;
  $("confirm-extra").replaceChildren(...extra);
  dialog.returnValue = "";
  dialog.showModal();
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
  });
}

// ------------------------------------------------------------------ views

const views = { overview, rooms, room, audit };
// docs/protocol.md's close codes, for people reading the overview.
const CLOSE_CODES = {
  1000: "closed by the client", 1001: "going away", 1006: "ended without a close frame",
  1008: "policy violation (repeated abuse)", 1009: "frame too large", 1011: "server error",
  4003: "disconnected by an operator", 4008: "slow consumer (stopped reading)",
};
let previous = null; // the last overview's live counters, for rates

async function overview(view, seq) {
  const data = await api("GET", "/admin/overview");
  if (seq !== renderSeq) return;
  const d = data.directory;
  const live = data.live;
  const cards = [
    stat("Rooms listed", num(d.rooms), "from their first message"),
    stat("Members", num(d.members), "as of each room's last directory write"),
    stat("Messages stored", num(d.messages)),
    stat("Waiting to be archived", num(d.unarchived), "messages", d.unarchived > 10000),
  ];
  const liveCards = [];
  let rejections = [];
  let closes = [];
  if (live) {
    let rates = { messages: null, deliveries: null, bytes: null };
    if (previous && data.now_ms > previous.now_ms) {
      const dt = (data.now_ms - previous.now_ms) / 1000;
      rates = {
        messages: (live.messages_published - previous.live.messages_published) / dt,
        deliveries: (live.deliveries - previous.live.deliveries) / dt,
        bytes: (live.bytes_out - previous.live.bytes_out) / dt,
      };
    }
    previous = data;
    const rate = (n, unit) => (n === null ? "…" : `${nf.format(Math.round(n * 10) / 10)} ${unit}`);
    liveCards.push(
      stat("Connections", num(live.connections), plural(live.users, "user")),
      stat("Rooms awake", num(live.rooms_awake), `${num(live.rooms_asleep)} asleep with sockets`),
      stat("Messages/s", rate(rates.messages, "/s"), `${num(live.messages_published)} since start`),
      stat("Deliveries/s", rate(rates.deliveries, "/s"), `${num(live.deliveries)} since start`),
      stat("Bytes out/s", rates.bytes === null ? "…" : `${bytes(Math.round(rates.bytes))}/s`,
        `${bytes(live.bytes_out)} since start`),
      stat("Slow-consumer cuts", num(live.slow_consumer_cuts), "closed with 4008", live.slow_consumer_cuts > 0),
      stat("Rate-limited frames", num(live.rate_limited)),
      stat("Archive runs", num(live.archive_runs), `${num(live.archive_failures)} failed`, live.archive_failures > 0),
    );
    rejections = Object.entries(live.rejections).sort((a, b) => b[1] - a[1]);
    closes = Object.entries(live.connections_closed).sort((a, b) => b[1] - a[1]);
  }
  view.replaceChildren(...[
    h("h1", {}, "Overview"),
    h("p", { class: "note" }, `Updated ${new Date(data.now_ms).toLocaleTimeString()}, every ${REFRESH_MS / 1000} s.`),
    h("div", { class: "grid", id: "totals" }, cards),
    live
      ? [h("h2", {}, "Live, since the server started"), h("div", { class: "grid", id: "live" }, liveCards),
        h("h2", {}, "Rejections by code"),
        table(["Code", h("th", { class: "num" }, "Count")],
          rejections.map(([code, n]) => h("tr", {}, h("td", {}, code), h("td", { class: "num" }, num(n)))),
          "No rejections."),
        h("h2", {}, "Connections closed, by close code"),
        table(["Code", "Meaning", h("th", { class: "num" }, "Count")],
          closes.map(([code, n]) => h("tr", { "data-code": code }, h("td", {}, code), h("td", {}, CLOSE_CODES[code] ?? ""),
            h("td", { class: "num" }, num(n)))),
          "No connection closed yet.")]
      : h("p", { class: "note", id: "live" },
        "Live figures (connections, messages/s, rejections) are in Workers Analytics Engine on Cloudflare: see docs/admin.md, \"Metrics on Cloudflare\"."),
  ].flat());
  schedule(() => render());
}

// The rooms list: sort, filter and keyset pages, all on the server (10,000+ rooms).
const list = { sort: "last_activity", order: "desc", q: "", cursors: [""] };
const COLUMNS = [
  ["name", "Room", "name"], ["members", "Members", "member_count"], ["sockets", "Sockets", "socket_count"],
  ["head", "Messages", "head_seq"], [null, "Archived", "archived_seq"], [null, "Retained", "rows_retained"],
  ["created", "Created", "created_ms"], ["last_activity", "Last message", "last_activity_ms"],
  [null, "Listed as of", "updated_ms"],
];

async function rooms(view, seq) {
  const cursor = list.cursors[list.cursors.length - 1];
  const params = new URLSearchParams({ sort: list.sort, order: list.order, limit: PAGE_SIZE });
  if (list.q) params.set("q", list.q);
  if (cursor) params.set("cursor", cursor);
  let page;
  try {
    page = await api("GET", `/admin/rooms?${params}`);
  } catch (error) {
    if (error.code !== "bad_request") throw error;
    page = { rooms: [], total: 0, next_cursor: null, problem: error.message };
  }
  if (seq !== renderSeq) return;
  const first = (list.cursors.length - 1) * PAGE_SIZE;
  const filter = h("input", {
    id: "room-filter", type: "search", placeholder: "Filter by name", value: list.q,
    "aria-label": "Filter rooms by name", maxlength: 64, autocomplete: "off", spellcheck: "false",
  });
  let typing = null;
  filter.addEventListener("input", () => {
    clearTimeout(typing);
    typing = setTimeout(() => {
      list.q = filter.value.trim();
      list.cursors = [""];
      render({ keepFocus: "room-filter" });
    }, 250);
  });
  const headers = COLUMNS.map(([key, label]) => {
    const numeric = label !== "Room" && !["Created", "Last message", "Listed as of"].includes(label);
    if (!key) return h("th", { class: numeric ? "num" : null }, label);
    const sorted = list.sort === key ? (list.order === "asc" ? "ascending" : "descending") : null;
    return h("th", { class: numeric ? "num" : null, "aria-sort": sorted },
      h("button", {
        class: "sort", type: "button", "data-sort": key,
        onclick: () => {
          list.order = list.sort === key && list.order === "desc" ? "asc" : "desc";
          list.sort = key;
          list.cursors = [""];
          render();
        },
      }, label));
  });
  const rows = page.rooms.map((r) => h("tr", { "data-room": r.name },
    h("td", {}, h("a", { href: `#/rooms/${encodeURIComponent(r.name)}` }, r.name)),
    h("td", { class: "num" }, num(r.member_count)), h("td", { class: "num" }, num(r.socket_count)),
    h("td", { class: "num" }, num(r.head_seq)), h("td", { class: "num" }, num(r.archived_seq)),
    h("td", { class: "num" }, num(r.rows_retained)),
    h("td", {}, when(r.created_ms)), h("td", {}, when(r.last_activity_ms)), h("td", {}, when(r.updated_ms))));
  const emptyText = page.problem
    ? page.problem
    : list.q ? `No room name contains "${list.q}".` : "No rooms yet: a room is listed from its first message.";
  const shown = page.rooms.length ? `${num(first + 1)}–${num(first + page.rooms.length)} of ${num(page.total)}` : `0 of ${num(page.total)}`;
  view.replaceChildren(
    h("h1", {}, "Rooms"),
    h("div", { class: "toolbar" }, filter, h("span", { class: "grow" }),
      h("span", { id: "room-count", class: "note" }, shown)),
    table(headers, rows, emptyText),
    h("div", { class: "pager" },
      h("button", {
        type: "button", class: "quiet", id: "prev-page", disabled: list.cursors.length === 1,
        onclick: () => { list.cursors.pop(); render(); },
      }, "‹ Previous"),
      h("button", {
        type: "button", class: "quiet", id: "next-page", disabled: !page.next_cursor,
        onclick: () => { list.cursors.push(page.next_cursor); render(); },
      }, "Next ›")),
    h("p", { class: "note" }, "Each row is what the room reported at its last directory write (its first message, each archive run, and whenever it is opened here)."),
  );
}

async function room(view, seq, name) {
  const path = `/admin/rooms/${encodeURIComponent(name)}`;
  let info;
  try {
    info = await api("GET", path);
  } catch (error) {
    if (error.code === "room_not_found" || error.code === "bad_room_name") {
      view.replaceChildren(h("h1", {}, name), h("p", { class: "empty" }, "No such room: it has never had a message."));
      return;
    }
    throw error;
  }
  const [recent, segments, log] = await Promise.all([
    api("GET", `${path}/messages?bodies=0&count=20`),
    api("GET", `${path}/segments?limit=20&after=${Math.max(0, info.archived_seq - 20000)}`),
    api("GET", `/admin/audit?room=${encodeURIComponent(name)}&limit=20`),
  ]);
  if (seq !== renderSeq) return;
  const act = async (action, title, text, query = "", extra = []) => {
    if (!(await confirmAction(title, text, extra))) return;
    try {
      await api("POST", `${path}/${action}${query instanceof Function ? query() : query}`);
      setBanner(`${title}: done.`, "ok");
    } catch (error) {
      if (error instanceof Unauthorized || error instanceof Unreachable) throw error;
      setBanner(`${title} failed: ${error.message}`);
    }
    render();
  };
  const banDuration = () => h("label", {}, "Ban for ",
    h("select", { id: "ban-duration" },
      [["600", "10 minutes"], ["3600", "1 hour"], ["86400", "1 day"], ["604800", "7 days"]]
        .map(([value, label]) => h("option", { value, selected: value === "3600" }, label))));
  const members = info.members.map((m) => m.sockets.map((s, i) => h("tr", { "data-user": m.user_id },
    h("td", { class: "wrap" }, i === 0 ? `${m.name} (${m.user_id})` : ""),
    h("td", {}, h("code", {}, s.conn_id)), h("td", {}, when(s.joined_ms)), h("td", {}, when(s.last_message_ms)),
    h("td", { class: "num" }, num(s.messages_sent)),
    h("td", {}, i === 0 ? h("div", { class: "actions" },
      h("button", {
        type: "button", class: "quiet", "data-action": "disconnect",
        onclick: () => act("disconnect", `Disconnect ${m.name}`,
          `Close all of ${m.user_id}'s sockets in ${name} (code 4003). They may reconnect at once.`,
          `?user_id=${encodeURIComponent(m.user_id)}`),
      }, "Disconnect"),
      h("button", {
        type: "button", class: "danger", "data-action": "ban",
        onclick: () => act("ban", `Ban ${m.name}`,
          `Close ${m.user_id}'s sockets and refuse them in ${name} until the ban ends.`,
          () => `?user_id=${encodeURIComponent(m.user_id)}&duration_s=${$("ban-duration").value}`,
          [banDuration()]),
      }, "Ban…")) : ""))));
  // Lifecycle events (docs/protocol.md) show what they did; a deleted body shows as deleted.
  const eventText = (m) => ({ edit: `edit of #${m.target}`, delete: `delete of #${m.target}`,
    react: `${m.emoji} on #${m.target}`, unreact: `${m.emoji} taken back from #${m.target}` })[m.kind] ?? m.kind;
  const bodyText = (m, withBodies) =>
    m.deleted ? "deleted" : m.kind && m.kind !== "edit" ? eventText(m)
      : `${m.kind ? `${eventText(m)}: ` : ""}${withBodies ? m.body : `${num(m.body_chars)} characters`}`;
  const messageRows = (messages, withBodies) => messages.slice().reverse().map((m) => h("tr", { "data-seq": m.seq },
    h("td", { class: "num" }, m.seq), h("td", {}, m.user_id ? `${m.name} (${m.user_id})` : m.name),
    h("td", {}, when(m.sent_ms)), h("td", { class: "wrap body-text" }, bodyText(m, withBodies)),
    h("td", {}, m.kind || m.deleted ? "" : h("button", {
      type: "button", class: "danger", "data-action": "delete",
      onclick: () => act("delete", `Delete message ${m.seq}`,
        `Delete message ${m.seq} of ${name} for everyone: no read serves its body again, the archive is rewritten. This is recorded in the audit log.`,
        `?seq=${m.seq}`),
    }, "Delete…"))));
  const auditBox = h("div", { id: "room-audit" }, auditTable(log.entries));
  const messageBox = h("div", { id: "messages" }, table(["Seq", "From", "Sent", "Body", ""], messageRows(recent.messages, false),
    "No messages."));
  const showBodies = h("button", {
    type: "button", class: "quiet", id: "show-bodies", disabled: recent.messages.length === 0,
    onclick: async () => {
      const ok = await confirmAction("Show message bodies",
        `Read the bodies of messages ${recent.first}–${recent.last} of ${name}? This read is recorded in the audit log.`);
      if (!ok) return;
      const read = await api("GET", `${path}/messages?first=${recent.first}&last=${recent.last}`);
      messageBox.replaceChildren(table(["Seq", "From", "Sent", "Body", ""], messageRows(read.messages, true), "No messages."));
      showBodies.disabled = true;
      const fresh = await api("GET", `/admin/audit?room=${encodeURIComponent(name)}&limit=20`);
      auditBox.replaceChildren(auditTable(fresh.entries));
      if (read.missing.length) setBanner(`Could not read seqs ${read.missing.map((r) => r.join("–")).join(", ")}.`);
    },
  }, "Show bodies…");
  view.replaceChildren(
    h("p", {}, h("a", { href: "#/rooms" }, "‹ All rooms")),
    h("h1", {}, name, " ", h("span", { class: info.closed ? "pill closed" : "pill open", id: "room-state" },
      info.closed ? "closed to messages" : "open")),
    h("div", { class: "grid" },
      stat("Members", num(info.member_count), plural(info.socket_count, "socket")),
      stat("Messages", num(info.head_seq), `archived up to ${num(info.archived_seq)}`),
      stat("Retained here", num(info.rows_retained), `from seq ${num(info.oldest_retained_seq)}`),
      stat("Storage", bytes(info.storage_bytes), plural(info.dedupe_entries, "dedupe key")),
      stat("Archive failures", num(info.archive_failures), info.last_archive_error ?? "none pending", info.archive_failures > 0),
      stat("Rate-limited", num(info.rate_limit_rejections), plural(info.slow_consumer_disconnects, "slow-consumer cut")),
      stat("Edits · deletes", `${num(info.events.edit)} · ${num(info.events.delete)}`,
        `${plural(info.events.react, "reaction")}; ${plural(info.redactions_pending, "deleted body", "deleted bodies")} left in R2`,
        info.redactions_pending > 0)),
    h("h2", {}, "Details"),
    h("dl", { class: "facts card" },
      h("dt", {}, "Created (first message)"), h("dd", {}, when(info.created_ms, true)),
      h("dt", {}, "Last message"), h("dd", {}, when(info.last_activity_ms, true)),
      h("dt", {}, "Next archive run"), h("dd", {}, info.next_alarm_ms ? when(info.next_alarm_ms, true) : "nothing waiting"),
      h("dt", {}, "Woken"), h("dd", {}, plural(info.wakes, "time"))),
    h("h2", {}, "Actions"),
    h("div", { class: "actions" },
      info.closed
        ? h("button", { type: "button", "data-action": "open", onclick: () => act("open", `Open ${name}`, "Accept new messages again.") }, "Open to messages…")
        : h("button", { type: "button", class: "danger", "data-action": "close", onclick: () => act("close", `Close ${name}`, "Refuse new messages (members stay, history stays readable).") }, "Close to messages…"),
      h("button", { type: "button", class: "quiet", "data-action": "archive", onclick: () => act("archive", `Archive ${name} now`, "Write everything not yet archived to R2 and D1 now.") }, "Archive now…")),
    h("h2", {}, `Members (${num(info.member_count)})`),
    table(["User", "Socket", "Joined", "Last message", h("th", { class: "num" }, "Sent"), ""], members.flat(), "Nobody is here."),
    h("h2", {}, "Bans"),
    h("div", { id: "bans" }, table(["User", "Refused until"],
      info.bans.map((b) => h("tr", { "data-user": b.user_id }, h("td", {}, b.user_id), h("td", {}, when(b.until_ms, true)))),
      "Nobody is banned.")),
    h("h2", {}, "Recent messages"),
    h("div", { class: "toolbar" }, h("span", { class: "note grow" }, "Bodies are hidden until asked for; each read of them is audited."), showBodies),
    messageBox,
    h("h2", {}, "Archive segments"),
    table(["Seqs", h("th", { class: "num" }, "Messages"), h("th", { class: "num" }, "Size"), "Written", "Key"],
      segments.segments.map((s) => h("tr", {}, h("td", {}, `${s.first_seq}–${s.last_seq}`), h("td", { class: "num" }, num(s.count)),
        h("td", { class: "num" }, bytes(s.bytes)), h("td", {}, when(s.created_ms)), h("td", {}, h("code", {}, s.key)))),
      "Nothing archived yet."),
    h("h2", {}, "Audit log"),
    auditBox,
  );
}

function auditTable(entries, withRoom = false) {
  return table(["When", "Action", ...(withRoom ? ["Room"] : []), "Target", "Result"],
    entries.map((e) => h("tr", { "data-action": e.action },
      h("td", {}, when(e.at_ms)), h("td", {}, e.action),
      withRoom ? h("td", {}, e.room ? h("a", { href: `#/rooms/${encodeURIComponent(e.room)}` }, e.room) : "") : null,
      h("td", { class: "wrap" }, e.target ?? ""), h("td", { class: "wrap" }, detailText(e.detail)))),
    "No operator actions yet.");
}

const auditPages = { cursors: [""] };

async function audit(view, seq) {
  const cursor = auditPages.cursors[auditPages.cursors.length - 1];
  const data = await api("GET", `/admin/audit?limit=${PAGE_SIZE}${cursor ? `&cursor=${cursor}` : ""}`);
  if (seq !== renderSeq) return;
  view.replaceChildren(h("h1", {}, "Audit log"),
    h("p", { class: "note" }, "Every operator action and every read of message bodies, newest first."),
    auditTable(data.entries, true),
    h("div", { class: "pager" },
      h("button", { type: "button", class: "quiet", disabled: auditPages.cursors.length === 1, onclick: () => { auditPages.cursors.pop(); render(); } }, "‹ Newer"),
      h("button", { type: "button", class: "quiet", disabled: !data.next_cursor, onclick: () => { auditPages.cursors.push(data.next_cursor); render(); } }, "Older ›")));
}

// ------------------------------------------------------------------ routing and states

function schedule(fn) {
  clearTimeout(refreshTimer);
  refreshTimer = setTimeout(fn, REFRESH_MS);
}

function route() {
  const hash = location.hash.replace(/^#/, "") || "/";
  const match = hash.match(/^\/rooms\/(.+)$/);
  if (match) return ["room", decodeURIComponent(match[1])];
  if (hash === "/rooms") return ["rooms"];
  if (hash === "/audit") return ["audit"];
  return ["overview"];
}

function showSignin(message = "") {
  clearTimeout(refreshTimer);
  $("nav").hidden = true;
  $("view").hidden = true;
  $("signin").hidden = false;
  $("signin-error").textContent = message;
  $("token").focus();
}

async function render({ keepFocus } = {}) {
  clearTimeout(refreshTimer);
  if (!sessionStorage.getItem(TOKEN_KEY)) {
    showSignin();
    return;
  }
  const [name, arg] = route();
  const seq = ++renderSeq;
  $("signin").hidden = true;
  $("nav").hidden = false;
  $("view").hidden = false;
  for (const link of document.querySelectorAll("#nav a")) {
    link.classList.toggle("current", link.dataset.view === (name === "room" ? "rooms" : name));
  }
  const view = $("view");
  view.setAttribute("aria-busy", "true");
  try {
    await views[name](view, seq, arg);
    if (seq === renderSeq) view.dataset.view = name; // what is on screen now
    if (keepFocus) {
      const el = $(keepFocus);
      if (el) { el.focus(); el.setSelectionRange?.(el.value.length, el.value.length); }
    }
  } catch (error) {
    if (seq !== renderSeq) return;
    if (error instanceof Unauthorized) {
      sessionStorage.removeItem(TOKEN_KEY);
      showSignin("That token was refused. Check ADMIN_TOKEN and sign in again.");
      return;
    }
    if (error instanceof Unreachable) {
      setBanner("The server cannot be reached. Retrying every few seconds…", "bad", true);
      schedule(() => render());
      return;
    }
    setBanner(`Something went wrong: ${error.message}`);
  } finally {
    view.removeAttribute("aria-busy");
  }
}

$("signin").addEventListener("submit", async (event) => {
  event.preventDefault();
  const token = $("token").value.trim();
  if (!token) {
    $("signin-error").textContent = "Enter the admin token.";
    return;
  }
  sessionStorage.setItem(TOKEN_KEY, token);
  $("token").value = "";
  previous = null;
  await render();
});

$("signout").addEventListener("click", () => {
  sessionStorage.removeItem(TOKEN_KEY);
  setBanner(null);
  showSignin("Signed out.");
});

window.addEventListener("hashchange", () => { setBanner(null); render(); });
render();
