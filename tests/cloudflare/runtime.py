"""workerd in miniature: the front Worker, the ROOMS namespace, hibernation, and test clients.

`FakeCloudflare` dispatches the way docs/cloudflare.md §1 describes ("§" below cites that page):
a fresh `Default` per request; `fetch` on an object through the SDK's conversions
(`python_from_rpc` in, `python_to_rpc` out); `webSocketMessage`/`Close`/`Error` and `alarm` with
raw JS arguments and the relaxed call that drops arguments a handler does not take. One `Room`
instance lives per name until it "hibernates": the instance is dropped and the next event
constructs a new one (running `__init__` again) while its `DurableObjectState`, sockets, SQLite
and alarm persist (§3.4). Alarms fire only when a test asks (`fire_alarm`, `fire_due_alarms`),
never on a timer.
The env holds fake D1 and R2 bindings as DB and ARCHIVE (fake_bindings.py) unless
``archive=False``.

Exceptions that escape a handler are recorded in ``escaped``; the fixtures require none.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import json
import time
from collections.abc import Awaitable, Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from tests.cloudflare.fake_bindings import D1Database, R2Bucket
from tests.cloudflare.fake_js import (
    WS_CLOSED,
    WS_CLOSING,
    WS_OPEN,
    ArrayBuffer,
    DurableObjectId,
    DurableObjectState,
    DurableObjectStorage,
    Headers,
    JsError,
    JsException,
    JsObject,
    JsPromise,
    JsProxy,
    JsTypeError,
    Request,
    Response,
    WebSocket,
)
from tests.cloudflare.fake_workers import python_from_rpc, python_to_rpc

ORIGIN = "https://rooms.example"
DROPPED_REASON = "WebSocket disconnected without sending Close frame."
SECRET = "test-secret-that-is-at-least-32-bytes-long"


@dataclass
class ObjectSlot:
    """One Durable Object: its durable state, and its Python instance while awake."""

    name: str
    state: DurableObjectState
    instance: Any = None
    constructions: int = 0
    requests: list[Request] = field(default_factory=list)  # what the object's fetch received


class ExecutionContext(JsProxy):
    js_class = "ExecutionContext"

    def waitUntil(self, promise: Any) -> None:  # pragma: no cover - unused by the front
        raise NotImplementedError


class DurableObjectStub(JsProxy):
    """What `getByName` returns; JS calls it a DurableObject (§5.1)."""

    js_class = "DurableObject"

    def __init__(self, runtime: FakeCloudflare, slot: ObjectSlot) -> None:
        self._runtime = runtime
        self._slot = slot

    def fetch(self, input: Any, init: Any = None) -> JsPromise:
        # The request crosses to the object as a copy (serialized between isolates' contexts).
        request = Request.construct(input, init)
        copy = Request(request.url, request.method, Headers(request.headers))
        return JsPromise(lambda: self._runtime.object_fetch(self._slot, copy))


class DurableObjectNamespace(JsProxy):
    js_class = "DurableObjectNamespace"

    def __init__(self, runtime: FakeCloudflare) -> None:
        self._runtime = runtime

    def idFromName(self, name: Any) -> DurableObjectId:
        if not isinstance(name, str):
            raise JsTypeError("idFromName() takes a string")
        hex_id = hashlib.sha256(name.encode()).hexdigest()
        return DurableObjectId(hex_id, name if self._runtime.id_has_name else None)

    def get(self, object_id: Any) -> DurableObjectStub:
        if not isinstance(object_id, DurableObjectId):
            raise JsTypeError("get() takes a DurableObjectId")
        return DurableObjectStub(self._runtime, self._runtime.slot_for(object_id))

    def getByName(self, name: Any) -> DurableObjectStub:
        return self.get(self.idFromName(name))


class AssetsFetcher(JsProxy):
    """The ASSETS binding: serves every path as a small text asset."""

    js_class = "Fetcher"

    def __init__(self) -> None:
        self.requests: list[Request] = []

    def fetch(self, input: Any, init: Any = None) -> JsPromise:
        request = Request.construct(input, init)
        self.requests.append(request)

        async def serve() -> Response:
            body = f"asset {request.url.removeprefix(ORIGIN)}"
            return Response.construct(body, JsObject({"status": 200}))

        return JsPromise(serve)


@dataclass
class HttpResult:
    """A response as the client sees it."""

    status: int
    headers: dict[str, str]
    body: str
    web_socket: WebSocket | None

    def json(self) -> Any:
        return json.loads(self.body)


class FakeCloudflare:
    """One Worker deployment: env, the ROOMS namespace and the objects behind it."""

    def __init__(
        self,
        *,
        worker_class: type,
        room_class: type,
        secret: str | None = SECRET,
        allowed_origins: str | None = "",
        assets: bool = True,
        hibernate_every_event: bool = False,
        id_has_name: bool = True,
        archive: bool = True,
        admin_token: str | None = None,
        extra_vars: dict[str, str] | None = None,
    ) -> None:
        self.worker_class = worker_class
        self.room_class = room_class
        self.hibernate_every_event = hibernate_every_event
        self.id_has_name = id_has_name
        self.namespace = DurableObjectNamespace(self)
        self.assets = AssetsFetcher() if assets else None
        props: dict[str, Any] = {"ROOMS": self.namespace}
        if self.assets is not None:
            props["ASSETS"] = self.assets
        if secret is not None:
            props["JWT_SECRET"] = secret
        if allowed_origins is not None:
            props["ALLOWED_ORIGINS"] = allowed_origins
        self.d1 = D1Database() if archive else None
        self.r2 = R2Bucket() if archive else None
        if self.d1 is not None and self.r2 is not None:
            props["DB"], props["ARCHIVE"] = self.d1, self.r2
        if admin_token is not None:
            props["ADMIN_TOKEN"] = admin_token
        props.update(extra_vars or {})
        self.env = JsObject(props)
        self.objects: dict[str, ObjectSlot] = {}
        self.escaped: list[BaseException] = []
        self.dropped: list[str] = []  # events with no handler to receive them

    # ----------------------------------------------------------------------- objects

    def slot_for(self, object_id: DurableObjectId) -> ObjectSlot:
        key = object_id.toString()
        if key not in self.objects:
            name = object_id._name or key
            state = DurableObjectState(object_id, DurableObjectStorage())
            self.objects[key] = ObjectSlot(name, state)
        return self.objects[key]

    def room(self, name: str) -> ObjectSlot:
        return self.slot_for(self.namespace.idFromName(name))

    def hibernate(self) -> None:
        """Evict every awake object; sockets and storage stay."""
        for slot in self.objects.values():
            slot.instance = None

    def _wake(self, slot: ObjectSlot) -> Any:
        if slot.instance is None:
            slot.instance = self.room_class(slot.state, self.env)
            slot.constructions += 1
        return slot.instance

    def _after_event(self, slot: ObjectSlot) -> None:
        if self.hibernate_every_event:
            slot.instance = None

    async def object_fetch(self, slot: ObjectSlot, request: Request) -> Response:
        slot.requests.append(request)
        try:
            instance = self._wake(slot)
            result = await instance.fetch(python_from_rpc(request))
        except Exception as exc:
            self.escaped.append(exc)
            # §2.6: the caller sees a JS error whose message carries the Python traceback.
            raise JsException("Error", f"PythonError: Traceback ... {exc!r}") from None
        finally:
            self._after_event(slot)
        response = python_to_rpc(result)
        if not isinstance(response, Response):
            raise JsTypeError("Incorrect type for Promise: the Promise did not resolve to "
                              "'Response'.")
        web_socket = response.webSocket
        if web_socket is not None and (web_socket.owner is not None or web_socket.accepted):
            raise JsTypeError("Can't return WebSocket in a Response after calling "
                              "acceptWebSocket().")  # web-socket.c++ WebSocket::couple
        return response

    def fire_alarm(self, room: str) -> None:
        """Run the object's alarm now, the way workerd runs a due one (§4.9).

        The object is woken (constructed again if it hibernated) and `alarm(alarmInfo)` is called
        relaxed with raw JS arguments. While it runs, getAlarm() is null unless the handler sets
        a new alarm. If the handler throws, the alarm stays set and the next run is a retry.
        """
        self._run_alarm(self.room(room))

    def _run_alarm(self, slot: ObjectSlot) -> None:
        storage = slot.state.storage
        info = storage.begin_alarm()
        succeeded = False
        try:
            instance = self._wake(slot)
            asyncio.run(_relaxed_call(instance.alarm, (info,)))
            succeeded = True
        except Exception as exc:
            self.escaped.append(exc)
        finally:
            storage.end_alarm(succeeded)
            self._after_event(slot)

    def fire_due_alarms(self, now_ms: int | None = None) -> list[str]:
        """Fire every alarm due at ``now_ms`` (default: now), as workerd's scheduler would."""
        now = int(time.time() * 1000) if now_ms is None else now_ms
        due = [slot for slot in self.objects.values()
               if slot.state.storage.alarm is not None and slot.state.storage.alarm <= now]
        for slot in due:
            self._run_alarm(slot)
        return [slot.name for slot in due]

    def _deliver(self, ws: WebSocket, handler: str, *js_args: Any) -> None:
        """A hibernatable socket event: wake the object and call the handler, relaxed."""
        state = ws.owner
        if state is None:
            self.dropped.append(f"{handler}: socket not accepted with acceptWebSocket")
            return
        slot = next(s for s in self.objects.values() if s.state is state)
        try:
            instance = self._wake(slot)
            method = getattr(type(instance), handler, None)
            if method is None:  # §1.4: a misspelled handler is never called
                self.dropped.append(f"{handler}: no such handler")
                return
            bound = getattr(instance, handler)
            asyncio.run(_relaxed_call(bound, js_args))
        except Exception as exc:
            self.escaped.append(exc)
        finally:
            self._after_event(slot)

    # ----------------------------------------------------------------------- the front

    def fetch(self, path: str, *, method: str = "GET",
              headers: Iterable[tuple[str, str]] = (), body: str | None = None) -> HttpResult:
        js_headers = Headers(list(headers))
        init: dict[str, Any] = {"method": method, "headers": js_headers}
        if body is not None:
            init["body"] = body
        request = Request.construct(ORIGIN + path, JsObject(init))
        response = asyncio.run(self._front(request))
        return HttpResult(
            status=response.status,
            headers={k: v for k, v in response.headers},
            body=(response._body or b"").decode(),
            web_socket=response.webSocket,
        )

    async def _front(self, request: Request) -> Response:
        worker = self.worker_class(ExecutionContext(), self.env)  # a new instance per request
        try:
            result = await worker.fetch(python_from_rpc(request))
        except Exception as exc:
            self.escaped.append(exc)
            return Response.construct("Worker threw exception", JsObject({"status": 500}))
        response = python_to_rpc(result)
        if not isinstance(response, Response):
            raise AssertionError(f"the Worker returned {result!r}, not a Response")
        return response

    def upgrade(self, room: str, token: str | None = None, *, since: int | None = 0,
                headers: Iterable[tuple[str, str]] = (), query: dict[str, str] | None = None,
                subprotocols: list[str] | None = None) -> HttpResult:
        params = dict(query or {})
        if token is not None:
            params["token"] = token
        if since is not None:
            params["since"] = str(since)
        all_headers = [("Upgrade", "websocket"), ("Connection", "Upgrade"), *headers]
        if subprotocols:
            all_headers.append(("Sec-WebSocket-Protocol", ", ".join(subprotocols)))
        suffix = f"?{urlencode(params)}" if params else ""
        return self.fetch(f"/rooms/{room}/ws{suffix}", headers=all_headers)

    def connect(self, room: str, token: str, **kwargs: Any) -> FakeClient:
        result = self.upgrade(room, token, **kwargs)
        assert result.status == 101, (result.status, result.body)
        assert result.web_socket is not None
        return FakeClient(self, result.web_socket)

    # ----------------------------------------------------------------------- client events

    def client_send(self, client: FakeClient, data: str | bytes) -> None:
        server = client.server
        if server.readyState != WS_OPEN:
            return  # the server end is closing: nothing is delivered
        state = server.owner
        pair = state.auto_response if state is not None else None
        if pair is not None and data == pair.request:
            # §3.8: answered by the runtime; the object is neither woken nor constructed.
            client.ws.inbox.append(pair.response)
            state.auto_responses_sent += 1  # type: ignore[union-attr]
            server.auto_response_ms = time.time() * 1000
            return
        message = data if isinstance(data, str) else ArrayBuffer(data)
        self._deliver(server, "webSocketMessage", server, message)

    def client_close(self, client: FakeClient, code: int, reason: str, *,
                     runtime_answers: bool, deliver: bool) -> None:
        """The client's close frame. workerd does not answer it for hibernatable sockets (even
        with web_socket_auto_reply_to_close, measured): the object sees the socket CLOSING and
        its own close() completes the handshake. ``runtime_answers`` models a runtime that
        would (§3.9 expected it); nothing measured does."""
        server = client.server
        server.got_close = (code, reason)
        if runtime_answers:
            server.sent_close = (code, reason)
            server.readyState = WS_CLOSED
            client.ws.got_close = (code, reason)
        else:
            server.readyState = WS_CLOSING
        if deliver:
            self.deliver_close(client)

    def deliver_close(self, client: FakeClient) -> None:
        server = client.server
        code, reason = server.got_close or (1005, "")
        self._deliver(server, "webSocketClose", server, code, reason, True)
        self._forget(server)

    def client_echo_close(self, client: FakeClient) -> None:
        """The client answers a close the room started; the object then gets webSocketClose."""
        server = client.server
        assert server.sent_close is not None, "the room did not close this socket"
        code, reason = server.sent_close
        server.got_close = (code or 1005, reason)
        server.readyState = WS_CLOSED
        self._deliver(server, "webSocketClose", server, code or 1005, reason, True)
        self._forget(server)

    def client_drop(self, client: FakeClient) -> None:
        """The connection is gone without a close frame, as workerd reports it (measured):
        webSocketClose with 1006 and wasClean false, the socket CLOSING until the object closes
        its end (nothing goes out), no webSocketError."""
        server = client.server
        server.got_close = (1006, DROPPED_REASON)
        server.readyState = WS_CLOSING
        server.dropped = True
        self._deliver(server, "webSocketClose", server, 1006, DROPPED_REASON, False)
        self._forget(server)

    def client_fail(self, client: FakeClient) -> None:
        """A webSocketError event. Local workerd delivered none for a dropped connection (see
        `client_drop`); production may for other failures."""
        server = client.server
        server.readyState = WS_CLOSED
        self._deliver(server, "webSocketError", server, JsError("connection reset"))
        self._forget(server)

    @staticmethod
    def _forget(server: WebSocket) -> None:
        if server.owner is not None and server in server.owner.sockets:
            server.owner.sockets.remove(server)


async def _relaxed_call(fn: Any, args: tuple[Any, ...]) -> None:
    """Call ``fn`` with as many positional arguments as it takes (§1.4, "relaxed")."""
    parameters = inspect.signature(fn).parameters.values()
    if not any(p.kind is p.VAR_POSITIONAL for p in parameters):
        args = args[: len(parameters)]
    result = fn(*args)
    if isinstance(result, Awaitable):
        await result


class FakeClient:
    """A browser's end of a room socket."""

    def __init__(self, runtime: FakeCloudflare, ws: WebSocket) -> None:
        self.runtime = runtime
        self.ws = ws
        assert ws.peer is not None
        self.server: WebSocket = ws.peer

    # -- sending
    def send(self, frame: dict[str, Any] | str | bytes) -> None:
        data = json.dumps(frame) if isinstance(frame, dict) else frame
        self.runtime.client_send(self, data)

    def publish(self, id_: str, body: str) -> None:
        self.send({"type": "publish", "id": id_, "body": body})

    def close(self, code: int = 1000, reason: str = "bye", *, runtime_answers: bool = False,
              deliver: bool = True) -> None:
        self.runtime.client_close(self, code, reason, runtime_answers=runtime_answers,
                                  deliver=deliver)

    def echo_close(self) -> None:
        self.runtime.client_echo_close(self)

    def fail(self) -> None:
        self.runtime.client_fail(self)

    def drop(self) -> None:
        self.runtime.client_drop(self)

    # -- receiving
    def frames(self, type_: str | None = None) -> list[dict[str, Any]]:
        decoded = []
        for data in self.ws.inbox:
            assert isinstance(data, str), f"the room sent a binary frame: {data!r}"
            try:
                frame = json.loads(data)
            except ValueError:
                raise AssertionError(f"the room sent a non-JSON text frame: {data!r}") from None
            if type_ is None or frame.get("type") == type_:
                decoded.append(frame)
        return decoded

    def take(self, type_: str | None = None) -> list[dict[str, Any]]:
        """Frames of that type received since the last take (every type when None)."""
        got = self.frames(type_)
        self.ws.inbox[:] = [d for d in self.ws.inbox if json.loads(d) not in got]
        return got

    def seqs(self) -> list[int]:
        return [frame["seq"] for frame in self.frames("message")]

    @property
    def close_received(self) -> tuple[int | None, str] | None:
        return self.ws.got_close
