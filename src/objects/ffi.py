"""Every raw JavaScript call the Cloudflare adapters make, and the conversions each one needs.

This is the only module that imports `js` or `pyodide`. The rules behind each helper are in
docs/cloudflare.md ("§" below). The short version (§6.1, §6.3, §6.6): only int,
float, str, bool and None cross into JavaScript by themselves. A list, dict, tuple or bytes arrives
as a PyProxy, which raw JS APIs reject (`acceptWebSocket`), fail to clone (`serializeAttachment`),
silently ignore (a `Request` init) or stringify (`WebSocket.send(b"x")` sends the text "b'x'").
The SDK converts arguments only for env bindings and `ctx.storage`; `ctx.*` hibernation methods,
`ws.*` and `js.*` are raw, so whatever they receive is built here.
"""

from __future__ import annotations

import functools
import json
import weakref
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

import js
from pyodide.ffi import create_proxy, to_js

try:
    from pyodide.ffi import jsnull
except ImportError:  # Pyodide before 0.28 has no jsnull: JS null always arrives as None
    jsnull = None

# A JavaScript object seen from Python (a pyodide JsProxy). Untyped on the host, hence Any.
JsObject = Any

# WebSocket.readyState values (WHATWG WebSocket, as implemented by workerd).
WS_OPEN = 1
WS_CLOSING = 2


def js_array(items: Sequence[str]) -> JsObject:
    """A JS Array of strings, for `ctx.acceptWebSocket(ws, tags)` (§3.2: a list is a PyProxy)."""
    return to_js(list(items))


# The JS globals the adapters call per event, looked up once: reading `js.Object.fromEntries`
# is two crossings, 8-10 us in Pyodide on Node, as much as converting a metrics point with it
# (BENCHMARKS.md, "On real workerd", round 7). `Object.fromEntries` is the converter that
# makes a dict a plain object (§6.2).
_from_entries = js.Object.fromEntries
_Request = js.Request
_Response = js.Response
_WebSocketPair = js.WebSocketPair
_WebSocketRequestResponsePair = js.WebSocketRequestResponsePair


def js_object(value: dict[str, Any]) -> JsObject:
    """A plain JS object (not a Map) from a dict of JSON-like values."""
    return to_js(value, dict_converter=_from_entries)


@functools.cache
def websocket_method(name: str) -> JsObject:
    """``WebSocket.prototype[name]`` as a plain JS function of (socket, *args).

    A JS Array's ``map`` calls it on every socket without entering Python at all
    (`HibernatableSockets.listing`). Called from Python one socket at a time it costs more than
    the socket's own method (BENCHMARKS.md), so it is for maps only. workerd's WebSocket methods
    live on its prototype (docs/cloudflare.md §3.10). Made once per isolate, on first use.
    """
    return js.Function.prototype.call.bind(getattr(js.WebSocket.prototype, name))


@functools.cache
def websocket_getter(name: str) -> JsObject:
    """The getter of ``WebSocket.prototype[name]`` as a JS function of (socket), like
    `websocket_method` (``readyState`` is an accessor on the prototype, §3.10)."""
    descriptor = js.Object.getOwnPropertyDescriptor(js.WebSocket.prototype, name)
    return js.Function.prototype.call.bind(descriptor.get)


def mapped(items: JsObject, fn: JsObject) -> list[Any]:
    """``items.map(fn)`` (a JS Array, a JS function of one item) as a Python list, converted in
    one crossing. JS null stays `jsnull`: the caller checks each value's type anyway (one pass
    over the list less when a room wakes with many sockets)."""
    values: list[Any] = items.map(fn).to_py()
    return values


def websocket_pair() -> tuple[JsObject, JsObject]:
    """A new (client, server) pair; the server end is what the Durable Object accepts (§3.1)."""
    client, server = _WebSocketPair.new().object_values()
    return client, server


def auto_response_pair(request: str, response: str) -> JsObject:
    """The pair for `ctx.setWebSocketAutoResponse`: answered without waking the object (§3.8)."""
    return _WebSocketRequestResponsePair.new(request, response)


def frame_data(message: str | JsObject) -> str | bytes:
    """A hibernation handler's message as Python data.

    A text frame arrives as str; a binary frame always arrives as a JS ArrayBuffer (§3.6), which
    `to_bytes()` copies out.
    """
    if isinstance(message, str):
        return message
    return bytes(message.to_bytes())


# JS `Array.from`: a cursor's rows as one JS Array, converted in one crossing (`raw_rows`).
_array_from = getattr(js.Array, "from")


def raw_rows(cursor: JsObject) -> list[Sequence[Any]]:
    """Every row of a raw `SqlStorage` cursor as Python lists of values in column order, NULL
    as None (§4.3: `cursor.raw()` yields each row as a JS Array; SQL NULL may surface as
    `jsnull`, Pyodide >= 0.28).

    The rows are gathered by `Array.from` in JS and converted by one `to_py()`: iterating the
    cursor from Python costs a crossing per row and another to convert each row, 2x the time of
    this for the 10-row catalogue a room reads when it wakes (BENCHMARKS.md, round 3).
    """
    rows = _array_from(cursor.raw()).to_py()
    return [[None if value is jsnull else value for value in row] for row in rows]


def header_dict(js_headers: JsObject) -> dict[str, str]:
    """A JS `Headers` as a dict keyed by lower-case name, in one crossing.

    JS Headers iterate with lower-case names, repeated names already joined by ", " and values
    trimmed. The SDK's ``Request.headers`` builds an `http.client.HTTPMessage` entry by entry
    instead: 325-600 us per call in workerd, against 75 us for this (BENCHMARKS.md, "On real
    workerd").
    """
    entries = _from_entries(js_headers).to_py()
    return {str(name).lower(): str(value) for name, value in entries.items()}


def upgrade_request(url: str, method: str, headers: Iterable[tuple[str, str]]) -> JsObject:
    """A request for ``url`` (a GET upgrade, no body) with exactly ``headers``, in one crossing.

    The init must be a real JS object: a Python dict would reach `new Request()` as a PyProxy,
    which JS reads differently from one Pyodide version to the next (§6.6), and to_js needs
    `dict_converter=Object.fromEntries` to make a plain object on every version (§6.2). The
    headers go as a JS Array of [name, value] Arrays of strs, which `Headers` takes as it takes
    a sequence of pairs (§2.2): one conversion for all of them, where a `Headers` filled one
    `append` at a time cost a crossing per header (BENCHMARKS.md, "On real workerd").
    """
    init = {"method": method, "headers": [[str(name), str(value)] for name, value in headers]}
    return _Request.new(url, to_js(init, dict_converter=_from_entries))


def upgrade_response(client: JsObject, subprotocol: str | None) -> JsObject:
    """The JS 101 answering an upgrade, carrying the client end of the pair (§3.1), with the
    subprotocol to echo when there is one.

    Built in one crossing: the SDK's `Response` checks the body's JS type, converts the headers
    and passes its options as keyword arguments, 400-550 us in workerd against ~100 for this
    (BENCHMARKS.md, "On real workerd"). A handler may return it as it is: the runtime's wrapper
    converts an SDK response to its JS object and leaves a JS one alone (§1.2).
    """
    init: dict[str, Any] = {"status": 101, "webSocket": client}
    if subprotocol is not None:
        init["headers"] = {"sec-websocket-protocol": subprotocol}
    return _Response.new(None, to_js(init, dict_converter=_from_entries))


def raw_env_binding(env: Any, name: str) -> JsObject:
    """The JS binding ``name`` (``env.ROOMS`` and the like), read from the raw JS env behind the
    `workers` SDK's wrapper of it.

    The SDK converts arguments and results of wrapped bindings, and its ``stub.fetch`` goes
    through ``pyodide.http.pyfetch``, which attaches an AbortController's signal to the
    subrequest. An upgrade's subrequest must outlive the handler that made it (the client's socket
    is its response), so the front forwards upgrades on the raw stub instead (docs/cloudflare.md
    §2.7). Read from the raw env, the binding also skips the wrapper's checks of its JS class (a
    few crossings, per request: the SDK wraps env anew for each). workers-runtime-sdk keeps the
    JS env in ``_env`` (`unwrapped_env`; pinned in tests/pyodide/requirements-pyodide.txt; the
    Pyodide and workerd tiers run the real SDK). A plain var under that name is a TypeError."""
    binding = getattr(unwrapped_env(env), name)
    if binding is None or isinstance(binding, str | int | float):
        raise TypeError(f"{name} is not a binding")
    return binding


def unwrapped(binding: Any) -> JsObject:
    """The JS object behind an SDK wrapper of a binding (``_binding``); a JS object that is not
    wrapped is returned as it is.

    The room calls its storage directly, without the wrapper's conversions (platform.py
    `DurableObjectSql`), whether it was handed ``ctx.storage`` or the raw storage.
    """
    return getattr(binding, "_binding", binding)


def unwrapped_env(env: Any) -> JsObject:
    """The JS env behind the SDK's wrapper of it (``_env``), or ``env`` itself."""
    return getattr(env, "_env", env)


def unwrapped_context(ctx: Any) -> JsObject:
    """The JS ``DurableObjectState`` behind the SDK's wrapper of it (``_ctx``), or ``ctx``."""
    return getattr(ctx, "_ctx", ctx)


def sql_bindings(values: Iterable[Any]) -> list[Any]:
    """Values to bind in a raw ``sql.exec``: None as JS null (passed bare it is undefined)."""
    return [jsnull if value is None else value for value in values]


# Where `inspect.signature` looks first, on `_HandlerCall`: neither a Signature nor text, so
# reading the signature raises TypeError.
_NO_SIGNATURE = object()


Handler = TypeVar("Handler", bound=Callable[..., Any])


def called_as_is(handler: Handler) -> Handler:
    """``handler`` with a signature `relaxed_call` cannot read, so that it calls it with the
    arguments as they are (§1.10): for a handler of a class whose instances do not hold much
    (the front's `Default`, made per request). A bound method of it still goes into
    `relaxed_call`'s cache, holding its instance; `call_handlers_as_is` keeps none."""
    handler.__signature__ = _NO_SIGNATURE  # type: ignore[attr-defined]
    return handler


def call_handlers_as_is(instance: object, names: Iterable[str]) -> None:
    """Give ``instance`` (of a class workerd instantiates) its handlers ``names`` as instance
    attributes that workerd calls with their arguments as they are, and that keep the
    instance alive no longer than workerd does (§1.10).

    workerd reads a handler on the instance for every event and calls it through Pyodide's
    `relaxed_call`, which binds the arguments to the handler's signature
    (`inspect.Signature.bind`) on every event, reads the signature again for every new
    instance (after every wake), and keeps the last 128 callables it saw in its cache: bound
    methods, each holding its instance (an evicted room with its sockets' proxies) alive.
    `relaxed_call` calls what has no readable signature directly, and a `_HandlerCall` equals
    the same handler of every other instance, so the cache holds one entry per handler, which
    holds its instance only weakly. The methods stay on the class, where workerd looks for the
    handlers a class has. Measured in Pyodide: 17 us per call through `relaxed_call` against
    1.4 us (best of 200); a room woken for every message with 100 sockets spent up to 1.2 ms per
    message in Python's garbage collector while the cache held 128 rooms, none without
    (BENCHMARKS.md). Each handler takes ``*_`` for any argument a runtime adds."""
    owner = type(instance)
    for name in names:
        setattr(instance, name, _HandlerCall(getattr(owner, name), weakref.ref(instance)))


class _HandlerCall:
    """A method bound weakly to its instance, equal to the same method of every other
    instance, with no signature to read (`call_handlers_as_is`)."""

    __slots__ = ("_fn", "_instance")
    __signature__ = _NO_SIGNATURE

    def __init__(self, fn: Callable[..., Any], instance: weakref.ref[object]) -> None:
        self._fn = fn
        self._instance = instance

    def __call__(self, *args: Any) -> Any:
        return self._fn(self._instance(), *args)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _HandlerCall) and other._fn is self._fn

    def __hash__(self) -> int:
        return hash(self._fn)


def persistent_function(fn: Callable[[], Any]) -> JsObject:
    """A JS function that calls ``fn``, for a raw API that calls back synchronously.

    Made once and kept for the object's lifetime: a Python callable passed bare to a raw JS call
    becomes a new proxy each time, one that is never freed.
    """
    return create_proxy(fn)


def object_name(ctx: JsObject) -> str | None:
    """The name the object was reached by (`ctx.id.name`), or None when it has none (§2.4)."""
    name = getattr(ctx.id, "name", None)  # undefined surfaces as AttributeError on a JsProxy
    return name if isinstance(name, str) and name else None


def var_text(value: str | JsObject | None) -> str | None:
    """A var from ``env`` as text: None when unset or empty.

    §5.5: a var given as a string arrives as str, but one given as a JSON object or array in
    wrangler.jsonc arrives as a JsProxy; `to_py()` converts it and it is re-encoded as JSON, so
    both spellings of ROOM_LIMITS and ARCHIVE_POLICY mean the same.
    """
    if value is None or value is jsnull:
        return None
    if isinstance(value, str):
        return value or None
    if hasattr(value, "to_py"):
        return json.dumps(value.to_py())
    raise TypeError(f"a var must be a string or JSON, not {type(value).__name__}")
