"""Baseline for `make bench`: a minimal broadcast server on plain `websockets`, no persistence.

It speaks the subset of the rooms protocol the load generator uses, so the same generator runs
against it unchanged: `GET /rooms/<room>/ws` gets a `welcome`; a `publish` gets an `ack` and is
broadcast as a `message` (with a per-room seq kept in memory) to every socket of the room, the
sender's included; the exact text {"type":"ping"} gets {"type":"pong"}. Tokens are not checked
and nothing is stored: this is the floor our runtime is measured against.

    python bench/baselines/ws_broadcast.py --port 8801
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import time
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import ServerConnection, broadcast, serve

PING = '{"type":"ping"}'
PONG = '{"type":"pong"}'


class Room:
    def __init__(self) -> None:
        self.members: set[ServerConnection] = set()
        self.seq = 0


rooms: dict[str, Room] = {}


async def handler(ws: ServerConnection) -> None:
    assert ws.request is not None
    url = urlsplit(ws.request.path)
    parts = url.path.strip("/").split("/")
    if len(parts) != 3 or parts[0] != "rooms" or parts[2] != "ws":
        await ws.close(1008, "no such path")
        return
    name = parts[1]
    since = int(parse_qs(url.query).get("since", ["0"])[0])
    room = rooms.setdefault(name, Room())
    welcome = {
        "type": "welcome",
        "room": name,
        "head": room.seq,
        # Nothing is stored, so nothing can be replayed: the resume is complete only from head.
        "resume": {"since": since, "complete": since >= room.seq, "missing": [], "reason": None},
    }
    await ws.send(json.dumps(welcome))
    room.members.add(ws)
    try:
        async for text in ws:
            if text == PING:
                await ws.send(PONG)
                continue
            frame = json.loads(text)
            if frame.get("type") != "publish":
                continue
            room.seq += 1
            await ws.send(json.dumps({"type": "ack", "id": frame["id"], "seq": room.seq}))
            message = {
                "type": "message",
                "seq": room.seq,
                "id": frame["id"],
                "user_id": "anonymous",
                "name": "anonymous",
                "body": frame["body"],
                "sent_ms": int(time.time() * 1000),
            }
            broadcast(room.members, json.dumps(message))
    finally:
        room.members.discard(ws)
        if not room.members:
            rooms.pop(name, None)


async def main(host: str, port: int) -> None:
    stop = asyncio.get_running_loop().create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set_result, None)
    # No permessage-deflate and a large backlog, like the runtime under test.
    async with serve(
        handler, host, port, compression=None, max_size=2**20, backlog=4096, ping_interval=None
    ):
        print(f"websockets baseline on ws://{host}:{port}", flush=True)
        await stop


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8801)
    args = parser.parse_args()
    asyncio.run(main(args.host, args.port))
