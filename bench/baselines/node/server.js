// Baseline for `make bench`: a minimal Node.js `ws` broadcast server, no persistence.
//
// The same protocol subset as bench/baselines/ws_broadcast.py: `GET /rooms/<room>/ws` gets a
// `welcome`; a `publish` gets an `ack` and is broadcast as a `message` (per-room seq in memory)
// to every socket of the room, the sender's included; {"type":"ping"} gets {"type":"pong"}.
// Tokens are not checked and nothing is stored.
//
//   node bench/baselines/node/server.js --port 8802
"use strict";

const http = require("http");
const { WebSocketServer } = require("ws");

function arg(name, fallback) {
  const i = process.argv.indexOf(name);
  return i >= 0 ? process.argv[i + 1] : fallback;
}

const host = arg("--host", "127.0.0.1");
const port = Number(arg("--port", "8802"));
const PING = '{"type":"ping"}';
const PONG = '{"type":"pong"}';
const rooms = new Map(); // name -> { members: Set<WebSocket>, seq: number }

const server = http.createServer((req, res) => {
  res.writeHead(426, { "content-type": "application/json" });
  res.end('{"error":{"code":"upgrade_required","message":"use a WebSocket"}}');
});
const wss = new WebSocketServer({ noServer: true, perMessageDeflate: false, maxPayload: 1 << 20 });

server.on("upgrade", (req, socket, head) => {
  const url = new URL(req.url, "http://x");
  const parts = url.pathname.split("/").filter(Boolean);
  if (parts.length !== 3 || parts[0] !== "rooms" || parts[2] !== "ws") {
    socket.destroy();
    return;
  }
  wss.handleUpgrade(req, socket, head, (ws) => join(ws, parts[1], Number(url.searchParams.get("since") || 0)));
});

function join(ws, name, since) {
  let room = rooms.get(name);
  if (!room) {
    room = { members: new Set(), seq: 0 };
    rooms.set(name, room);
  }
  ws.send(JSON.stringify({
    type: "welcome", room: name, head: room.seq,
    resume: { since, complete: since >= room.seq, missing: [], reason: null },
  }));
  room.members.add(ws);
  ws.on("message", (data, isBinary) => {
    if (isBinary) return;
    const text = data.toString();
    if (text === PING) { ws.send(PONG); return; }
    let frame;
    try { frame = JSON.parse(text); } catch { return; }
    if (frame.type !== "publish") return;
    room.seq += 1;
    ws.send(JSON.stringify({ type: "ack", id: frame.id, seq: room.seq }));
    const message = JSON.stringify({
      type: "message", seq: room.seq, id: frame.id, user_id: "anonymous", name: "anonymous",
      body: frame.body, sent_ms: Date.now(),
    });
    for (const member of room.members) member.send(message);
  });
  ws.on("close", () => {
    room.members.delete(ws);
    if (room.members.size === 0) rooms.delete(name);
  });
}

server.listen({ host, port, backlog: 4096 }, () => {
  console.log(`node ws baseline on ws://${host}:${port}`);
});
for (const sig of ["SIGTERM", "SIGINT"]) process.on(sig, () => process.exit(0));
