// Baseline for `make bench-workerd`: a JavaScript Worker and Durable Object room in the same
// workerd, under the same `wrangler dev`, driven by the same `rooms loadtest` as our Python Worker.
//
// It does the work of Cloudflare's JS chat demo (one object per room, the WebSocket Hibernation
// API, a storage write per message, a broadcast to every socket of the room) and speaks the part
// of docs/protocol.md that the load generator uses:
//
//   GET /health                       200
//   GET /rooms/<room>/ws?token=&since= the front Worker checks the HS256 token's signature, `sub`
//                                     and `exp` (WebCrypto, the key imported once per isolate)
//                                     and forwards the upgrade to the room's object by name
//   on join                           `welcome` (with `head` and the member list), the stored
//                                     messages after `since`, a `presence` join to the others
//   {"type":"publish","id","body"}    stored under the next seq (one INSERT into the object's
//                                     SQLite), `ack` to the sender, `message` to every socket,
//                                     the sender's included
//   {"type":"ping"}                   `pong` by the platform's auto-response, the room asleep or not
//
// Not done (our Room does them; the demo does not): idempotent retransmits, rate limits, edits
// and reactions, history pages, read state, the archive, origin checks, log lines.
import { DurableObject } from "cloudflare:workers";

const ROOM_NAME = /^\/rooms\/([A-Za-z0-9._~-]{1,64})\/ws$/;
const MAX_BODY_CHARS = 4000;
const encoder = new TextEncoder();
let signingKey = null; // one HMAC key per isolate, as our front keeps its parsed config

function errorResponse(status, code, message) {
  const body = JSON.stringify({ error: { code, message } });
  return new Response(body, { status, headers: { "content-type": "application/json" } });
}

function base64urlBytes(text) {
  const padded = text.replace(/-/g, "+").replace(/_/g, "/");
  const raw = atob(padded + "===".slice((padded.length + 3) % 4));
  const bytes = new Uint8Array(raw.length);
  for (let i = 0; i < raw.length; i++) bytes[i] = raw.charCodeAt(i);
  return bytes;
}

// The token's claims when its HS256 signature, `sub` and `exp` are good; null otherwise.
async function verifiedClaims(token, secret) {
  const parts = token.split(".");
  if (parts.length !== 3) return null;
  try {
    const header = JSON.parse(new TextDecoder().decode(base64urlBytes(parts[0])));
    if (header.alg !== "HS256") return null;
    signingKey ??= await crypto.subtle.importKey(
      "raw",
      encoder.encode(secret),
      { name: "HMAC", hash: "SHA-256" },
      false,
      ["verify"],
    );
    const signed = encoder.encode(`${parts[0]}.${parts[1]}`);
    const good = await crypto.subtle.verify("HMAC", signingKey, base64urlBytes(parts[2]), signed);
    if (!good) return null;
    const claims = JSON.parse(new TextDecoder().decode(base64urlBytes(parts[1])));
    const fresh = typeof claims.exp === "number" && claims.exp > Date.now() / 1000;
    return fresh && typeof claims.sub === "string" && claims.sub ? claims : null;
  } catch {
    return null; // undecodable base64 or JSON
  }
}

export default {
  async fetch(request, env) {
    const url = new URL(request.url);
    if (url.pathname === "/health") return new Response("ok");
    const room = ROOM_NAME.exec(url.pathname);
    if (!room) return errorResponse(404, "not_found", "no such path");
    if (request.headers.get("Upgrade") !== "websocket") {
      return errorResponse(426, "upgrade_required", "use a WebSocket");
    }
    const claims = await verifiedClaims(url.searchParams.get("token") ?? "", env.JWT_SECRET);
    if (!claims) return errorResponse(401, "token_invalid", "a valid token is required");
    const headers = new Headers(request.headers);
    headers.set("x-rooms-user", claims.sub); // set here only: a client's own is overwritten
    return env.ROOMS.getByName(room[1]).fetch(new Request(request, { headers }));
  },
};

export class Room extends DurableObject {
  constructor(ctx, env) {
    super(ctx, env);
    this.sql = ctx.storage.sql;
    this.sql.exec(
      "CREATE TABLE IF NOT EXISTS messages (seq INTEGER PRIMARY KEY, id TEXT NOT NULL, " +
        "user_id TEXT NOT NULL, body TEXT NOT NULL, sent_ms INTEGER NOT NULL)",
    );
    this.head = this.sql.exec("SELECT coalesce(max(seq), 0) AS head FROM messages").one().head;
    this.lastMs = 0;
    // As the demo: the members in memory, rebuilt from the sockets' attachments on every wake.
    this.members = new Map();
    for (const ws of ctx.getWebSockets()) this.members.set(ws, ws.deserializeAttachment());
    ctx.setWebSocketAutoResponse(
      new WebSocketRequestResponsePair('{"type":"ping"}', '{"type":"pong"}'),
    );
  }

  async fetch(request) {
    const url = new URL(request.url);
    const user = request.headers.get("x-rooms-user") ?? "";
    const sinceText = url.searchParams.get("since");
    const since = sinceText === null ? this.head : Math.max(0, Number.parseInt(sinceText, 10) || 0);
    const pair = new WebSocketPair();
    const [client, server] = [pair[0], pair[1]];
    this.ctx.acceptWebSocket(server);
    const member = { user_id: user, name: user };
    server.serializeAttachment(member);
    const joined = JSON.stringify({ type: "presence", event: "join", member });
    this.broadcast(joined);
    this.members.set(server, member);
    const presence = [...new Map([...this.members.values()].map((m) => [m.user_id, m])).values()];
    const complete = since <= this.head;
    server.send(
      JSON.stringify({
        type: "welcome",
        room: url.pathname.split("/")[2] ?? "",
        user_id: user,
        head: this.head,
        presence,
        resume: { since, complete, missing: [], reason: complete ? null : "since_ahead" },
        max_body_chars: MAX_BODY_CHARS,
      }),
    );
    if (since < this.head) {
      const rows = this.sql.exec(
        "SELECT seq, id, user_id, body, sent_ms FROM messages WHERE seq > ? ORDER BY seq",
        since,
      );
      for (const row of rows) {
        server.send(JSON.stringify({ type: "message", ...row, name: row.user_id }));
      }
    }
    return new Response(null, { status: 101, webSocket: client });
  }

  webSocketMessage(ws, data) {
    let frame;
    try {
      frame = JSON.parse(data);
    } catch {
      frame = null;
    }
    const good =
      frame !== null &&
      frame.type === "publish" &&
      typeof frame.id === "string" &&
      frame.id.length >= 1 &&
      frame.id.length <= 64 &&
      typeof frame.body === "string" &&
      frame.body.length <= MAX_BODY_CHARS;
    if (!good) {
      const ref = typeof frame?.id === "string" ? frame.id : null;
      ws.send(JSON.stringify({ type: "error", code: "bad_frame", message: "not a publish", ref }));
      return;
    }
    const member = this.members.get(ws) ?? ws.deserializeAttachment();
    const seq = this.head + 1;
    const sentMs = Math.max(Date.now(), this.lastMs);
    // One write per message; workerd's output gate holds the frames below until it is durable.
    // The cursor is read to its end: an unread one stays registered and makes every later
    // exec slower (BENCHMARKS.md, "On real workerd").
    this.sql.exec(
      "INSERT INTO messages (seq, id, user_id, body, sent_ms) VALUES (?, ?, ?, ?, ?)",
      seq,
      frame.id,
      member.user_id,
      frame.body,
      sentMs,
    ).toArray();
    this.head = seq;
    this.lastMs = sentMs;
    ws.send(JSON.stringify({ type: "ack", id: frame.id, seq, duplicate: false }));
    this.broadcast(
      JSON.stringify({
        type: "message",
        seq,
        id: frame.id,
        user_id: member.user_id,
        name: member.name,
        body: frame.body,
        sent_ms: sentMs,
      }),
    );
  }

  webSocketClose(ws, code) {
    this.leave(ws);
    try {
      ws.close(code === 1005 ? 1000 : code, "");
    } catch {
      // already closed
    }
  }

  webSocketError(ws) {
    this.leave(ws);
  }

  leave(ws) {
    const member = this.members.get(ws);
    if (!member) return;
    this.members.delete(ws);
    const stillHere = [...this.members.values()].some((m) => m.user_id === member.user_id);
    if (!stillHere) this.broadcast(JSON.stringify({ type: "presence", event: "leave", member }));
  }

  broadcast(text) {
    for (const ws of this.members.keys()) {
      try {
        ws.send(text);
      } catch {
        this.members.delete(ws); // closed under us: its close event follows
      }
    }
  }
}
