"""JavaScript as Pyodide shows it to Python inside workerd: the fake behind `import js`.

Each fake object enforces the rule the real runtime enforces, so an adapter mistake fails a test
instead of a deployment. Rules are those of docs/cloudflare.md ("§" below); the ones that
matter most:

* Only None, bool, int, float and str cross from Python to JS by themselves (§6.1). Anything else
  handed to a raw JS API is a *PyProxy*: `is_pyproxy` below. What the API then does differs:
  `acceptWebSocket` throws, `serializeAttachment` throws DataCloneError, `new Request(url, dict)`
  silently ignores the init, and `send(b"x")` sends the *text* "b'x'" (§6.6). The silent
  cases append to `FFI_WARNINGS`, which the test fixtures require to be empty.
* JS errors reach Python as `JsException` with ``name`` and ``message`` (Pyodide); JS TypeErrors
  are also Python TypeErrors here, so tests can match either.
* JS objects are unhashable and compare by identity (§6.8).

Where the real workerd was measured (tests/workerd/test_probes.py), the fakes do what it did:
tag limits in UTF-8 bytes, attachment sizes in V8's format, close-code errors by name, BigInt
bindings refused, numbers bound as REAL, times in the past given to setAlarm moved to now.
docs/cloudflare.md §8 lists where the fakes were wrong before.
"""

from __future__ import annotations

import json
import re
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

# Coercions the real runtime performs silently (a PyProxy stringified or ignored). The fixtures
# fail any test that leaves one here.
FFI_WARNINGS: list[str] = []
OPEN_DATABASES: list[sqlite3.Connection] = []

WS_CONNECTING, WS_OPEN, WS_CLOSING, WS_CLOSED = 0, 1, 2, 3
MAX_TAGS = 10  # workerd actor-state.h MAX_TAGS_PER_CONNECTION (§3.2)
MAX_TAG_BYTES = 256  # MAX_TAG_LENGTH: UTF-8 bytes, although workerd's message says characters
MAX_ATTACHMENT_BYTES = 16 * 1024  # web-socket.h MAX_ATTACHMENT_SIZE (§3.3)
MAX_AUTO_RESPONSE_CHARS = 2048  # §3.8
MAX_SAFE_INTEGER = 2**53


# --------------------------------------------------------------------------- errors


class JsException(Exception):  # noqa: N818  (Pyodide's name)
    """A JS error thrown into Python (pyodide.ffi.JsException)."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(f"{name}: {message}")
        self.name = name
        self.message = message


class JsTypeError(JsException, TypeError):
    def __init__(self, message: str) -> None:
        JsException.__init__(self, "TypeError", message)


class JsRangeError(JsException, ValueError):
    def __init__(self, message: str) -> None:
        JsException.__init__(self, "RangeError", message)


def data_clone_error(what: str) -> JsException:
    return JsException("DataCloneError", f"{what} could not be cloned.")


# --------------------------------------------------------------------------- values


class _JsNull:
    """pyodide.ffi.jsnull: JS null where Pyodide keeps it distinct from undefined/None."""

    def __bool__(self) -> bool:
        return False

    def __repr__(self) -> str:
        return "jsnull"


jsnull = _JsNull()


class _Constructor:
    def __init__(self, name: str) -> None:
        self.name = name


class JsProxy:
    """A JS object seen from Python. Like Pyodide's JsProxy: unhashable, `==` is identity."""

    js_class = "Object"
    __hash__ = None  # type: ignore[assignment]

    @property
    def constructor(self) -> _Constructor:
        return _Constructor(self.js_class)

    def to_py(self, *, default_converter: Callable[..., Any] | None = None) -> Any:
        return js_to_py(self, default_converter)


def is_primitive(value: object) -> bool:
    return value is None or value is jsnull or isinstance(value, bool | int | float | str)


def becomes_bigint(value: object) -> bool:
    """Whether Pyodide hands this Python int to JS as a BigInt rather than a Number.

    Only ints strictly inside (-(2**53 - 1), 2**53 - 1) become Numbers (Pyodide 314's
    `Jsv_BigIntToNum`), so Number.MAX_SAFE_INTEGER itself is already a BigInt.
    """
    safe = MAX_SAFE_INTEGER - 1
    return isinstance(value, int) and not isinstance(value, bool) and not -safe < value < safe


def is_pyproxy(value: object) -> bool:
    """What a Python value becomes when passed to JS without to_js: anything not primitive."""
    return not is_primitive(value) and not isinstance(value, JsProxy)


def js_string(value: object) -> str:
    """JS String(value): what a PyProxy turns into where a string is expected."""
    if isinstance(value, JsArray):
        return ",".join("" if item is None or item is jsnull else js_string(item)
                        for item in value)
    if isinstance(value, JsProxy) and not isinstance(value, ArrayBuffer):
        return "[object Object]"
    return str(value)


def _js_number(value: object) -> float:
    """JS Number(value) for what a close code may be given as (a number or numeric text)."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float):
        return float(value)
    try:
        return float(js_string(value))
    except ValueError:
        return float("nan")


class JsArray(JsProxy):
    js_class = "Array"

    def __init__(self, items: Iterable[Any] = ()) -> None:
        self._items = list(items)

    def __iter__(self) -> Iterator[Any]:
        return iter(list(self._items))

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, index: int) -> Any:
        return self._items[index]

    @property
    def length(self) -> int:
        return len(self._items)

    def push(self, *values: Any) -> int:
        self._items.extend(values)
        return len(self._items)

    def __repr__(self) -> str:
        return f"JsArray({self._items!r})"


class JsObject(JsProxy):
    """A plain JS object; a property that is undefined raises AttributeError, as in Pyodide."""

    def __init__(self, props: dict[str, Any] | None = None) -> None:
        object.__setattr__(self, "_props", dict(props or {}))

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        try:
            return self._props[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name: str, value: Any) -> None:
        self._props[name] = value

    def object_values(self) -> JsArray:
        return JsArray(self._props.values())

    def __repr__(self) -> str:
        return f"JsObject({self._props!r})"


class JsMap(JsProxy):
    js_class = "Map"

    def __init__(self, entries: Iterable[tuple[Any, Any]] = ()) -> None:
        self._entries = dict(entries)

    def get(self, key: Any) -> Any:
        return self._entries.get(key)

    def __iter__(self) -> Iterator[JsArray]:
        return iter([JsArray([k, v]) for k, v in self._entries.items()])


class ArrayBuffer(JsProxy):
    js_class = "ArrayBuffer"

    def __init__(self, data: bytes) -> None:
        self._data = bytes(data)

    @property
    def byteLength(self) -> int:
        return len(self._data)

    def to_bytes(self) -> bytes:
        return self._data


class Uint8Array(ArrayBuffer):
    js_class = "Uint8Array"


class Date(JsProxy):
    """A JS Date: milliseconds since the epoch (the SDK converts it to and from datetime)."""

    js_class = "Date"

    def __init__(self, ms: float) -> None:
        self._ms = float(ms)

    def getTime(self) -> float:
        return self._ms

    def valueOf(self) -> float:
        return self._ms


class JsError(JsProxy):
    js_class = "Error"

    def __init__(self, message: str) -> None:
        self.message = message
        self.name = "Error"


class JsPromise(JsProxy):
    """A pending JS promise: awaitable, and has `then` (the SDK looks for it)."""

    js_class = "Promise"

    def __init__(self, start: Callable[[], Any]) -> None:
        self._start = start  # the coroutine is made on await, so none is left un-awaited

    def then(self, *_: Any) -> None:  # pragma: no cover - present for detection only
        raise NotImplementedError

    def __await__(self) -> Any:
        return self._start().__await__()


def js_to_py(value: Any, default_converter: Callable[..., Any] | None = None) -> Any:
    """Pyodide's `to_py`: Arrays, plain objects, Maps and buffers convert; others stay JS."""

    def convert(item: Any) -> Any:
        return js_to_py(item, default_converter)

    if isinstance(value, JsArray):
        return [convert(item) for item in value._items]
    if type(value) is JsObject:
        return {key: convert(item) for key, item in value._props.items()}
    if isinstance(value, JsMap):
        return {key: convert(item) for key, item in value._entries.items()}
    if isinstance(value, ArrayBuffer):
        return memoryview(value._data)
    if isinstance(value, JsProxy) and default_converter is not None:
        return default_converter(value, convert, lambda *_: None)
    return value


def structured_clone(value: Any, what: str = "value") -> Any:
    """The structured clone workerd applies to attachments (§3.3): PyProxies cannot be cloned."""
    if is_primitive(value):
        return value
    if isinstance(value, JsArray):
        return JsArray(structured_clone(item, what) for item in value)
    if type(value) is JsObject:
        return JsObject({k: structured_clone(v, what) for k, v in value._props.items()})
    if isinstance(value, JsMap):
        return JsMap((k, structured_clone(v, what)) for k, v in value._entries.items())
    if isinstance(value, ArrayBuffer):
        return type(value)(value._data)
    if isinstance(value, JsProxy):
        raise data_clone_error(f"#<{value.js_class}>")
    raise data_clone_error("[object Object]")  # a PyProxy: dict, list, Struct, bytes (measured)


def _varint_size(n: int) -> int:
    size = 1
    while n >= 0x80:
        n >>= 7
        size += 1
    return size


def serialized_size(value: Any) -> int:
    """V8's serialized size of ``value`` (ValueSerializer, as workerd measures attachments).

    A string is exact: a 2-byte header, a tag, the varint byte length and the bytes (one per
    Latin-1 character, else two UTF-16 units, aligned by a padding byte), so the largest
    attachment is "x" * 16379 or "€" * 8189, as measured in workerd. Other values are estimated.
    """
    if isinstance(value, str):
        if all(ord(c) < 256 for c in value):
            return 2 + 1 + _varint_size(len(value)) + len(value)
        units = len(value.encode("utf-16-le"))
        head = 2 + 1 + _varint_size(units)
        return head + (head % 2) + units
    if isinstance(value, ArrayBuffer):
        return 4 + len(value._data)
    return 4 + len(json.dumps(js_to_py(value), default=str))


# --------------------------------------------------------------------------- constructors


class JsConstructor:
    """`js.X`: construct with `js.X.new(...)`; calling a JS class without `new` throws."""

    def __init__(self, name: str, factory: Callable[..., Any] | None, **statics: Any) -> None:
        self.name = name
        self._factory = factory
        self.__dict__.update(statics)

    def new(self, *args: Any, **kwargs: Any) -> Any:
        if self._factory is None:
            raise JsTypeError(f"Illegal constructor: {self.name}")
        if kwargs:  # Pyodide passes Python kwargs as one trailing options object (§6.5)
            args = (*args, JsObject(kwargs))
        return self._factory(*args)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise JsTypeError(f"Class constructor {self.name} cannot be invoked without 'new'")


def object_from_entries(entries: Any) -> JsObject:
    if is_pyproxy(entries) and not isinstance(entries, list | tuple):
        raise JsTypeError("Object.fromEntries requires an iterable of entries")
    props: dict[str, Any] = {}
    for entry in entries:
        key, value = list(entry)
        props[js_string(key)] = value
    return JsObject(props)


# --------------------------------------------------------------------------- fetch API


_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


def _header_pairs(init: Any) -> list[tuple[str, str]]:
    """WebIDL HeadersInit: an iterable of pairs, or (for an object without an iterator) a record."""
    if init is None or init is jsnull:
        return []
    if isinstance(init, Headers):
        return list(init._pairs)
    if type(init) is JsObject:
        return [(k, js_string(v)) for k, v in init._props.items()]
    if isinstance(init, str | bytes) or not hasattr(init, "__iter__"):
        raise JsTypeError("Failed to construct 'Headers': The provided value is not of type "
                          "'(record<ByteString, ByteString> or sequence<sequence<ByteString>>)'.")
    pairs = []
    for entry in init:
        # A Python dict iterates its keys: each is a string, not a pair, and fails here.
        if isinstance(entry, str) or not hasattr(entry, "__iter__"):
            raise JsTypeError("Failed to construct 'Headers': The provided value cannot be "
                              "converted to a sequence.")
        items = list(entry)
        if len(items) != 2:
            raise JsTypeError("Failed to construct 'Headers': Invalid value")
        pairs.append((js_string(items[0]), js_string(items[1])))
    return pairs


class Headers(JsProxy):
    js_class = "Headers"

    def __init__(self, init: Any = None) -> None:
        self._pairs: list[tuple[str, str]] = []
        for name, value in _header_pairs(init):
            self.append(name, value)

    @staticmethod
    def _check(name: str, value: str) -> tuple[str, str]:
        if not isinstance(name, str) or not _TOKEN.fullmatch(name):
            raise JsTypeError(f"Invalid header name: {name!r}")
        if not isinstance(value, str) or any(ord(c) > 255 for c in value) or "\n" in value:
            raise JsTypeError(f"Invalid header value for {name!r}")  # ByteString
        return name.lower(), value.strip()

    def append(self, name: str, value: str) -> None:
        self._pairs.append(self._check(name, value))

    def set(self, name: str, value: str) -> None:
        name, value = self._check(name, value)
        self.delete(name)
        self._pairs.append((name, value))

    def delete(self, name: str) -> None:
        self._pairs = [(k, v) for k, v in self._pairs if k != name.lower()]

    def get(self, name: str) -> str | None:
        values = [v for k, v in self._pairs if k == name.lower()]
        return ", ".join(values) if values else None

    def has(self, name: str) -> bool:
        return any(k == name.lower() for k, _ in self._pairs)

    def __iter__(self) -> Iterator[JsArray]:
        # JS Headers iterate sorted by name, with repeated names joined by ", ".
        names = sorted({k for k, _ in self._pairs})
        return iter([JsArray([name, self.get(name)]) for name in names])


def _init_object(init: Any, what: str) -> JsObject | None:
    """Read a RequestInit/ResponseInit. A PyProxy has no JS properties: it reads as empty."""
    if init is None or init is jsnull:
        return None
    if isinstance(init, JsObject):
        return init
    if isinstance(init, JsProxy):
        return None
    FFI_WARNINGS.append(f"{what} init was a {type(init).__name__} PyProxy; JS read no options")
    return None


def _absolute_url(value: Any) -> str:
    if not isinstance(value, str) or not re.match(r"https?://[^/\s]+", value):
        raise JsTypeError(f"Failed to parse URL from {js_string(value)}")
    return value


class Request(JsProxy):
    js_class = "Request"

    def __init__(self, url: str, method: str = "GET", headers: Headers | None = None) -> None:
        self.url = url
        self.method = method
        self.headers = headers or Headers()
        self.bodyUsed = False
        self._body = b""

    @classmethod
    def construct(cls, input: Any, init: Any = None) -> Request:
        if isinstance(input, Request):
            request = cls(input.url, input.method, Headers(input.headers))
        else:
            request = cls(_absolute_url(input))
        options = _init_object(init, "Request")
        if options is not None:
            method = getattr(options, "method", None)
            if method is not None:
                request.method = js_string(method).upper()
            headers = getattr(options, "headers", None)
            if headers is not None:
                request.headers = Headers(headers)
            body = getattr(options, "body", None)
            if body is not None:
                request._body = _body_bytes(body) or b""
        return request

    async def text(self) -> str:
        return self._body.decode()

    async def arrayBuffer(self) -> ArrayBuffer:
        return ArrayBuffer(self._body)


NULL_BODY_STATUSES = frozenset({101, 204, 205, 304})


def _body_bytes(body: Any) -> bytes | None:
    if body is None or body is jsnull:
        return None
    if isinstance(body, str):
        return body.encode()
    if isinstance(body, ArrayBuffer):
        return body.to_bytes()
    if isinstance(body, JsProxy):
        raise JsTypeError(f"unsupported body #<{body.js_class}> in this fake")
    text = js_string(body)  # BodyInit falls back to USVString
    FFI_WARNINGS.append(f"Response body was a {type(body).__name__} PyProxy; sent {text[:40]!r}")
    return text.encode()


class Response(JsProxy):
    """workerd's Response: unlike a browser's, it takes status 101 with a `webSocket`."""

    js_class = "Response"

    def __init__(self, body: bytes | None, status: int, headers: Headers,
                 web_socket: WebSocket | None) -> None:
        self._body = body
        self.status = status
        self.statusText = ""
        self.headers = headers
        self.webSocket = web_socket
        self.url = ""
        self.ok = 200 <= status <= 299

    @classmethod
    def construct(cls, body: Any = None, init: Any = None) -> Response:
        options = _init_object(init, "Response")
        status = getattr(options, "status", 200) if options is not None else 200
        headers = Headers(getattr(options, "headers", None) if options is not None else None)
        web_socket = getattr(options, "webSocket", None) if options is not None else None
        if web_socket is not None and not isinstance(web_socket, WebSocket):
            raise JsTypeError("Failed to construct 'Response': webSocket must be a WebSocket")
        if web_socket is not None and status != 101:
            raise JsRangeError("Responses with a WebSocket must have status 101")
        if status == 101 and web_socket is None:
            raise JsRangeError("Responses may only be constructed with status 101 with a "
                               "WebSocket")
        if status != 101 and not 200 <= status <= 599:
            raise JsRangeError("Responses may only be constructed with status codes in the range "
                               "200 to 599, inclusive.")
        data = _body_bytes(body)
        if status in NULL_BODY_STATUSES and data is not None:
            raise JsTypeError(f"Response with null body status {status} cannot have a body.")
        return cls(data, status, headers, web_socket)

    async def text(self) -> str:
        return (self._body or b"").decode()


# --------------------------------------------------------------------------- WebSockets


class WebSocket(JsProxy):
    """One end of a WebSocketPair. The test's client holds the other end (``peer``)."""

    js_class = "WebSocket"

    def __init__(self) -> None:
        self.readyState = WS_OPEN
        self.peer: WebSocket | None = None
        self.is_server = False
        self.accepted = False  # ws.accept() was called
        self.owner: DurableObjectState | None = None  # set by acceptWebSocket
        self.tags: list[str] = []
        self.inbox: list[str | bytes] = []  # frames the other end sent (for the client end)
        self.sent_close: tuple[int | None, str] | None = None
        self.got_close: tuple[int | None, str] | None = None
        self.attachment_writes: list[Any] = []  # raw values passed to serializeAttachment
        self.fail_attachment_writes: BaseException | None = None  # fault injection for tests
        self._attachment: Any = None
        self._attached = False
        self.dropped = False  # the connection is gone: nothing goes out any more
        self.auto_response_ms: float | None = None  # when the runtime last auto-responded

    # -- the JS API
    def accept(self) -> None:
        if self.owner is not None:
            raise JsTypeError("This WebSocket was accepted by state.acceptWebSocket() already.")
        self.accepted = True

    def send(self, message: Any) -> None:
        # workerd web-socket.c++ WebSocket::send: after our close() it throws; after the peer
        # went away (an error) it silently drops the message.
        if self.sent_close is not None:
            raise JsTypeError("Can't call WebSocket send() after close().")
        if self.is_server and not (self.accepted or self.owner is not None):
            raise JsTypeError("You must call one of accept() or state.acceptWebSocket() on this "
                              "WebSocket before sending messages.")
        data: str | bytes
        if isinstance(message, str):
            data = message
        elif isinstance(message, ArrayBuffer):
            data = message.to_bytes()
        else:  # §6.6: Web IDL (ArrayBuffer or string) coerces a PyProxy with String()
            data = js_string(message)
            FFI_WARNINGS.append(f"WebSocket.send got a {type(message).__name__} PyProxy; "
                                f"sent the text {data[:40]!r}")
        if self.readyState == WS_CLOSED or self.dropped:
            return
        assert self.peer is not None
        self.peer.inbox.append(data)

    def close(self, code: Any = None, reason: Any = None) -> None:
        # workerd WebSocket::close: a second close() is ignored; codes are 1000-4999 except the
        # ones that never go on the wire; a reason needs a code.
        if self.sent_close is not None or self.readyState == WS_CLOSED:
            return
        if self.is_server and not (self.accepted or self.owner is not None):
            raise JsTypeError("You must call one of accept() or state.acceptWebSocket() on this "
                              "WebSocket before sending messages.")
        if code is not None:
            # Web IDL converts the code to a number: 4000.0 and "4000" are accepted (measured).
            number = _js_number(code)
            if number != int(number) or not 1000 <= number < 5000 \
                    or number in (1004, 1005, 1006, 1015):
                raise JsException("InvalidAccessError", f"Invalid WebSocket close code: {code}.")
            code = int(number)
        if reason is not None and code is None:
            raise JsException("InvalidAccessError", "If you specify a WebSocket close reason, "
                              "you must also specify a code.")
        text = "" if reason is None else js_string(reason)
        if len(text.encode()) > 123:
            raise JsException("SyntaxError", "WebSocket close reason must not be longer than "
                              "123 bytes when UTF-8 encoded.")
        self.sent_close = (code, text)
        assert self.peer is not None
        if not self.dropped:
            self.peer.got_close = (code, text)
        # Closing after the other side's close completes the handshake (getReadyState).
        self.readyState = WS_CLOSED if self.got_close is not None else WS_CLOSING

    def serializeAttachment(self, value: Any) -> None:
        self.attachment_writes.append(value)
        if self.fail_attachment_writes is not None:
            raise self.fail_attachment_writes
        clone = structured_clone(value, "attachment")
        size = serialized_size(clone)
        if size > MAX_ATTACHMENT_BYTES:
            raise JsException("Error", "A WebSocket 'attachment' cannot be larger than "
                              f"{MAX_ATTACHMENT_BYTES} bytes.'attachment' was {size} bytes.")
        self._attachment = clone
        self._attached = True

    def deserializeAttachment(self) -> Any:
        if not self._attached:
            return jsnull  # nothing attached: null, which Pyodide keeps as jsnull (measured)
        return structured_clone(self._attachment)


class WebSocketPair(JsProxy):
    js_class = "WebSocketPair"

    def __init__(self) -> None:
        client, server = WebSocket(), WebSocket()
        client.peer, server.peer = server, client
        server.is_server = True
        self._ends = (client, server)

    def object_values(self) -> JsArray:
        return JsArray(self._ends)

    def __iter__(self) -> Iterator[WebSocket]:
        return iter(self._ends)

    def __getitem__(self, index: int) -> WebSocket:
        return self._ends[index]


class WebSocketRequestResponsePair(JsProxy):
    js_class = "WebSocketRequestResponsePair"

    def __init__(self, request: Any, response: Any) -> None:
        for value in (request, response):
            if not isinstance(value, str):
                raise JsTypeError("WebSocketRequestResponsePair takes two strings")
            if len(value) > MAX_AUTO_RESPONSE_CHARS:
                raise JsRangeError(f"auto-response strings are at most "
                                   f"{MAX_AUTO_RESPONSE_CHARS} characters")
        self.request = request
        self.response = response


# --------------------------------------------------------------------------- Durable Objects


class DurableObjectId(JsProxy):
    js_class = "DurableObjectId"

    def __init__(self, hex_id: str, name: str | None) -> None:
        self._hex = hex_id
        self._name = name

    def __getattr__(self, attr: str) -> Any:
        if attr == "name" and self._name is not None:
            return self._name
        raise AttributeError(attr)  # `name` is undefined for ids not made from a name

    def toString(self) -> str:
        return self._hex


class DurableObjectState(JsProxy):
    """`ctx` as workerd passes it: hibernation methods are raw JS (§1.3, §6.3)."""

    js_class = "DurableObjectState"

    def __init__(self, object_id: DurableObjectId, storage: DurableObjectStorage) -> None:
        self.id = object_id
        self.storage = storage
        self.sockets: list[WebSocket] = []  # accepted and not yet closed-and-delivered
        self.accept_calls: list[tuple[WebSocket, Any]] = []  # (ws, the raw tags argument)
        self.auto_response: WebSocketRequestResponsePair | None = None
        self.auto_response_calls: list[Any] = []
        self.auto_responses_sent = 0
        self.fail_next_accept: BaseException | None = None  # fault injection for tests
        self.fail_next_get_websockets: BaseException | None = None

    def acceptWebSocket(self, ws: Any, tags: Any = None) -> None:
        self.accept_calls.append((ws, tags))
        if self.fail_next_accept is not None:
            exc, self.fail_next_accept = self.fail_next_accept, None
            raise exc
        if not isinstance(ws, WebSocket):
            raise JsTypeError("Failed to execute 'acceptWebSocket': parameter 1 is not of type "
                              "'WebSocket'.")
        if tags is None:
            tag_list: list[str] = []
        elif isinstance(tags, JsArray):
            tag_list = list(tags)
        else:  # §3.2: a Python list is a PyProxy, not an Array
            raise JsTypeError("Failed to execute 'acceptWebSocket': parameter 2 is not of type "
                              "'Array'.")
        if not all(isinstance(tag, str) for tag in tag_list):
            raise JsTypeError("Failed to execute 'acceptWebSocket': tags must be strings.")
        # As measured in workerd: duplicates are dropped as tags are added, and the count is
        # checked before each one, so ten distinct tags and a repeat fail, while a repeat among
        # the first ten does not; lengths are UTF-8 bytes.
        distinct: list[str] = []
        for tag in tag_list:
            if len(distinct) >= MAX_TAGS:
                raise JsException("Error", f"a Hibernatable WebSocket cannot have more than "
                                  f"{MAX_TAGS} tags")
            if len(tag.encode()) > MAX_TAG_BYTES:
                raise JsException("Error", f'"{tag}" is longer than the max tag length '
                                  f"({MAX_TAG_BYTES} characters).")
            if tag not in distinct:
                distinct.append(tag)
        if not ws.is_server or ws.accepted or ws.owner is not None:
            raise JsTypeError("Can only accept the unaccepted server end of a WebSocketPair.")
        ws.owner = self
        ws.tags = distinct
        self.sockets.append(ws)

    def getWebSockets(self, tag: Any = None) -> JsArray:
        if self.fail_next_get_websockets is not None:
            exc, self.fail_next_get_websockets = self.fail_next_get_websockets, None
            raise exc
        # §3.5: CLOSING sockets are included until their close event was delivered.
        return JsArray(ws for ws in self.sockets if tag is None or tag in ws.tags)

    def getTags(self, ws: Any) -> JsArray:
        if not isinstance(ws, WebSocket):
            raise JsTypeError("Failed to execute 'getTags' on 'DurableObjectState': parameter 1 "
                              "is not of type 'WebSocket'.")
        if ws.owner is not self:
            raise JsException("Error", "you must call 'acceptWebSocket()' before attempting to "
                              "access the tags of a WebSocket.")
        return JsArray(ws.tags)

    def setWebSocketAutoResponse(self, pair: Any = None) -> None:
        self.auto_response_calls.append(pair)
        if pair is not None and not isinstance(pair, WebSocketRequestResponsePair):
            raise JsTypeError("Failed to execute 'setWebSocketAutoResponse': parameter 1 is not "
                              "of type 'WebSocketRequestResponsePair'.")
        self.auto_response = pair

    def getWebSocketAutoResponse(self) -> WebSocketRequestResponsePair | None:
        return self.auto_response

    def getWebSocketAutoResponseTimestamp(self, ws: Any) -> Date | _JsNull:
        """When the runtime last answered ``ws`` with the auto-response: a Date, or null."""
        stamp = getattr(ws, "auto_response_ms", None)
        return jsnull if stamp is None else Date(stamp)


def _settled(value: Any) -> Callable[[], Any]:
    async def settle() -> Any:
        return value

    return settle


class DurableObjectStorage(JsProxy):
    """The JS class name matters: the SDK wraps `ctx.storage` only under this name (§6.3)."""

    js_class = "DurableObjectStorage"

    def __init__(self) -> None:
        self.sql = SqlStorage()
        self._depth = 0
        self.alarm: int | None = None  # epoch ms; one alarm per object
        self.alarm_sets: list[int] = []
        self.alarm_retries = 0  # consecutive failed runs of the current alarm
        self._running_alarm: int | None = None

    def setAlarm(self, scheduled: Any) -> JsPromise:
        # §4.9: a Date (the SDK converts a datetime to one) or epoch ms; kept to the millisecond.
        if isinstance(scheduled, Date):
            scheduled = scheduled.getTime()
        if not isinstance(scheduled, int | float) or isinstance(scheduled, bool):
            raise JsTypeError("Failed to execute 'setAlarm' on 'DurableObjectStorage': "
                              "parameter 1 is not of type 'date'.")
        if not scheduled > 0:
            raise JsTypeError("setAlarm() cannot be called with an alarm time <= 0")
        # workerd moves a time in the past to now, so it fires at once (measured; epoch seconds
        # passed for milliseconds are a time in January 1970).
        self.alarm = max(int(scheduled), int(time.time() * 1000))
        self.alarm_sets.append(self.alarm)
        return JsPromise(_settled(None))

    def getAlarm(self) -> JsPromise:
        # An integral JS number reaches Python as int; no alarm is null (None via the SDK).
        return JsPromise(_settled(jsnull if self.alarm is None else self.alarm))

    def deleteAlarm(self) -> JsPromise:
        self.alarm = None
        return JsPromise(_settled(None))

    def begin_alarm(self) -> JsObject:
        """The runtime starts the alarm handler: returns the `alarmInfo` it passes.

        While the handler runs, getAlarm() is null unless the handler set a new alarm (DOCS
        api-storage-alarms); the fired alarm is deleted only if the handler succeeds.
        """
        assert self.alarm is not None, "no alarm is set"
        self._running_alarm = self.alarm
        self.alarm = None
        retries = self.alarm_retries
        return JsObject({"retryCount": retries, "isRetry": retries > 0})

    def end_alarm(self, succeeded: bool) -> None:
        """A failed handler is retried (at-least-once, §4.9) unless it set a new alarm itself."""
        if succeeded:
            self.alarm_retries = 0
        elif self.alarm is None and self._running_alarm is not None:
            self.alarm = self._running_alarm
            self.alarm_retries += 1

    def transactionSync(self, fn: Any) -> Any:
        if not callable(fn):
            raise JsTypeError("transactionSync() takes a function")
        self._depth += 1
        name = f"tx{self._depth}"
        self.sql.run_internal(f"SAVEPOINT {name}")
        try:
            result = fn()
        except BaseException:
            self.sql.run_internal(f"ROLLBACK TO {name}")
            self.sql.run_internal(f"RELEASE {name}")
            raise
        finally:
            self._depth -= 1
        self.sql.run_internal(f"RELEASE {name}")
        return result


_DENIED_ACTIONS = {
    sqlite3.SQLITE_TRANSACTION: "BEGIN/COMMIT/ROLLBACK (use transactionSync)",
    sqlite3.SQLITE_SAVEPOINT: "SAVEPOINT (use transactionSync)",
    sqlite3.SQLITE_ATTACH: "ATTACH",
    sqlite3.SQLITE_DETACH: "DETACH",
    sqlite3.SQLITE_PRAGMA: "PRAGMA",
}


def _split_statements(query: str) -> list[str]:
    statements, current = [], ""
    for piece in query.split(";"):
        current += piece + ";"
        if sqlite3.complete_statement(current):
            if current.strip(" \t\r\n;"):
                statements.append(current)
            current = ""
    if current.strip(" \t\r\n;"):
        statements.append(current)
    return statements


class SqlStorage(JsProxy):
    """`ctx.storage.sql` over an in-memory sqlite3, with workerd's binding and statement rules."""

    js_class = "SqlStorage"

    def __init__(self) -> None:
        self._db = sqlite3.connect(":memory:", isolation_level=None)
        OPEN_DATABASES.append(self._db)  # closed after each test (Python 3.13 warns otherwise)
        self._internal = False
        self._db.set_authorizer(self._authorize)
        self.statements: list[str] = []

    def _authorize(self, action: int, arg1: Any, arg2: Any, *_: Any) -> int:
        if self._internal:
            return sqlite3.SQLITE_OK
        if action in _DENIED_ACTIONS:
            return sqlite3.SQLITE_DENY
        for name in (arg1, arg2):
            if isinstance(name, str) and name.lower().startswith("_cf_"):
                return sqlite3.SQLITE_DENY  # §4.4: names starting with _cf_ are reserved
        return sqlite3.SQLITE_OK

    def run_internal(self, statement: str) -> None:
        self._internal = True
        try:
            self._db.execute(statement)
        finally:
            self._internal = False

    @staticmethod
    def _bind(value: Any) -> Any:
        """A bound JS value as SQLite sees it (workerd sql.h BindingValue: bytes|string|double)."""
        if value is None or value is jsnull:
            return None
        if isinstance(value, bool):
            return "true" if value else "false"  # §4.2: a boolean becomes its string
        if isinstance(value, int):
            if becomes_bigint(value):  # measured: workerd refuses a BigInt binding
                raise JsTypeError("Cannot convert a BigInt value to a number")
            return float(value)  # a JS number binds as a double: REAL without column affinity
        if isinstance(value, float | str):
            return value
        if isinstance(value, ArrayBuffer):
            return value.to_bytes()
        if isinstance(value, JsArray | JsObject):
            # What the SDK makes of a list or dict; bound as its String() (measured: "1,2").
            text = js_string(value)
            FFI_WARNINGS.append(f"SQL binding was a JS {value.js_class}; bound {text[:40]!r}")
            return text
        if isinstance(value, JsProxy):
            raise JsTypeError(f"Unsupported SQL binding #<{value.js_class}>")
        text = js_string(value)
        FFI_WARNINGS.append(f"SQL binding was a {type(value).__name__} PyProxy; "
                            f"bound {text[:40]!r}")
        return text

    @staticmethod
    def _result(value: Any) -> Any:
        if value is None:
            return jsnull
        if isinstance(value, bytes):
            return ArrayBuffer(value)
        if isinstance(value, int) and abs(value) > MAX_SAFE_INTEGER:
            return float(value)  # §4.3: INTEGER results are doubles
        if isinstance(value, float) and value.is_integer() and abs(value) <= MAX_SAFE_INTEGER:
            return int(value)  # an integral JS number reaches Python as an int
        return value

    def exec(self, query: Any, *bindings: Any) -> SqlCursor:
        if not isinstance(query, str):
            raise JsTypeError("exec() takes the query as a string")
        statements = _split_statements(query)
        if not statements:
            raise JsException("Error", "SQL query did not contain a statement.")
        params = [self._bind(b) for b in bindings]
        last = statements[-1]
        try:
            for statement in statements[:-1]:  # only the last statement takes bindings
                try:
                    self._db.execute(statement)
                except sqlite3.ProgrammingError as exc:
                    if "number of bindings" not in str(exc):
                        raise
                    raise JsException("Error", "When executing multiple SQL statements in a "
                                      "single call, only the last statement can have "
                                      "parameters.") from None
            try:
                cursor = self._db.execute(last, params)
            except sqlite3.ProgrammingError as exc:
                if "number of bindings" not in str(exc):
                    raise
                raise JsException("Error", "Wrong number of parameter bindings for SQL "
                                  "query.") from None
            rows = cursor.fetchall()
        except sqlite3.Error as exc:
            raise JsException("Error", f"{exc}: SQLITE_ERROR") from None
        self.statements.extend(statements)
        columns = [d[0] for d in cursor.description or ()]
        converted = [[self._result(v) for v in row] for row in rows]
        return SqlCursor(columns, converted, rows_written=max(cursor.rowcount, 0))

    @property
    def databaseSize(self) -> int:
        self._internal = True  # the runtime reads its own size; user code may not PRAGMA
        try:
            pages = self._db.execute("PRAGMA page_count").fetchone()[0]
        finally:
            self._internal = False
        return int(pages) * 4096


class _RawIterator(JsProxy):
    js_class = "Iterator"

    def __init__(self, rows: Iterator[list[Any]]) -> None:
        self._rows = rows

    def __iter__(self) -> Iterator[JsArray]:
        return (JsArray(row) for row in self._rows)


class SqlCursor(JsProxy):
    js_class = "SqlStorageCursor"

    def __init__(self, columns: list[str], rows: list[list[Any]], rows_written: int) -> None:
        self._columns = columns
        self._rows = iter(rows)
        self._count = len(rows)
        self.rowsRead = len(rows)
        self.rowsWritten = rows_written

    @property
    def columnNames(self) -> JsArray:
        return JsArray(self._columns)

    def _object(self, row: list[Any]) -> JsObject:
        return JsObject(dict(zip(self._columns, row, strict=True)))

    def __iter__(self) -> Iterator[JsObject]:
        return (self._object(row) for row in self._rows)

    def raw(self) -> _RawIterator:
        return _RawIterator(self._rows)

    def toArray(self) -> JsArray:
        return JsArray(self._object(row) for row in self._rows)

    def one(self) -> JsObject:
        rows = list(self._rows)
        if len(rows) != 1:
            raise JsException("Error", f"Expected exactly one result from SQL query, but got "
                              f"{len(rows) or 'no'} results.")
        return self._object(rows[0])

    def next(self) -> JsObject:
        row = next(self._rows, None)
        if row is None:
            return JsObject({"done": True})
        return JsObject({"done": False, "value": self._object(row)})


# --------------------------------------------------------------------------- the module


def _outbound_fetch(*_: Any) -> Any:
    raise JsException("Error", "outbound fetch is not available in these tests")


def build_module() -> Any:
    """The `js` module: workerd's globalThis as Pyodide exposes it."""
    import types

    module = types.ModuleType("js")
    module.__dict__.update(
        Object=JsConstructor("Object", lambda *a: JsObject(), fromEntries=object_from_entries),
        Array=JsConstructor("Array", lambda *items: JsArray(items),
                            isArray=lambda v: isinstance(v, JsArray)),
        Headers=JsConstructor("Headers", Headers),
        Request=JsConstructor("Request", Request.construct),
        Response=JsConstructor("Response", Response.construct),
        WebSocket=JsConstructor("WebSocket", None),
        WebSocketPair=JsConstructor("WebSocketPair", WebSocketPair),
        WebSocketRequestResponsePair=JsConstructor(
            "WebSocketRequestResponsePair", WebSocketRequestResponsePair),
        ArrayBuffer=JsConstructor("ArrayBuffer", lambda n=0: ArrayBuffer(bytes(n))),
        Uint8Array=JsConstructor("Uint8Array", lambda data=b"": Uint8Array(bytes(data))),
        Error=JsConstructor("Error", JsError),
        Date=JsConstructor("Date", Date, now=lambda: time.time() * 1000),
        fetch=_outbound_fetch,
    )
    return module
