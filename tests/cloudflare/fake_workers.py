"""The fake behind `import workers`: the parts of workers-runtime-sdk 1.9.5 the adapters use.

It mirrors what the SDK converts and what it leaves raw (docs/cloudflare.md §1.3, §2.1, §5.1,
§6.3; "§" below cites that page), on top of the fake `js` and `pyodide.ffi`:

* `DurableObject`/`WorkerEntrypoint` subclasses get their ``__init__`` wrapped: a DO's ``ctx``
  becomes a `DurableObjectContext` that wraps only ``ctx.storage``; ``env`` becomes `_EnvWrapper`.
* Wrapped bindings convert arguments with `python_to_rpc` (None -> null, dict -> plain object,
  datetime -> Date, tuple/bytearray -> TypeError, callables -> proxies) and results with
  `python_from_rpc` (Arrays -> list, plain objects -> `JsDict`, Date -> datetime, other JS
  objects wrapped again).
* `getByName(...).fetch(...)` and `ASSETS.fetch(...)` return a `Response`.
"""

from __future__ import annotations

import datetime
import http.client
import inspect
import json
import types
from collections.abc import Mapping
from http import HTTPMethod
from typing import Any

from tests.cloudflare import fake_js
from tests.cloudflare.fake_js import JsProxy, jsnull
from tests.cloudflare.fake_pyodide import create_proxy, to_js

_PASSTHROUGH = {"Response", "Request", "Headers", "ArrayBuffer", "Uint8Array", "ReadableStream"}


def _is_js_instance(value: Any, name: str) -> bool:
    return isinstance(value, JsProxy) and value.constructor.name == name


class JsDict(dict):  # type: ignore[type-arg]
    """A converted JS object: a dict that also allows attribute access."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def _replace_jsnull(value: Any) -> Any:
    if value is jsnull:
        return None
    if isinstance(value, dict):
        return JsDict({k: _replace_jsnull(v) for k, v in value.items()})
    if isinstance(value, list):
        return [_replace_jsnull(v) for v in value]
    return value


def _from_rpc_default(value: Any, convert: Any, cache: Any) -> Any:
    if _is_js_instance(value, "Response"):
        return Response(value)
    if _is_js_instance(value, "Request"):
        return Request(value)
    if _is_js_instance(value, "Date"):  # naive local time, as the SDK's fromtimestamp gives
        return datetime.datetime.fromtimestamp(value.getTime() / 1000)
    return value


def python_from_rpc(obj: Any) -> Any:
    if obj is jsnull:
        return None
    if not isinstance(obj, JsProxy):
        return obj
    return _replace_jsnull(obj.to_py(default_converter=_from_rpc_default))


def _raise_on_disabled_type(value: Any) -> None:
    if isinstance(value, _BindingWrapper) or (callable(value) and not isinstance(value, type)):
        return
    if isinstance(value, tuple | bytearray):
        raise TypeError(f"{type(value)} cannot be sent over RPC.")
    if inspect.isawaitable(value):
        raise TypeError(f"Awaitable {type(value)} cannot be sent over RPC.")
    if isinstance(value, dict):
        for item in value.values():
            _raise_on_disabled_type(item)
    elif isinstance(value, list):
        for item in value:
            _raise_on_disabled_type(item)


def _to_rpc_default(obj: Any, convert: Any, cache: Any) -> Any:
    if obj is None:
        return jsnull
    if isinstance(obj, _BindingWrapper):
        return obj._binding
    if hasattr(obj, "js_object"):
        return obj.js_object
    if isinstance(obj, datetime.datetime):
        return fake_js.Date(obj.timestamp() * 1000)
    if callable(obj) and not isinstance(obj, type):
        return create_proxy(obj)
    _raise_on_disabled_type(obj)
    return obj


def _none_to_jsnull(value: Any) -> Any:
    if value is None:
        return jsnull
    if isinstance(value, dict):
        return {k: _none_to_jsnull(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_none_to_jsnull(v) for v in value]
    return value


def python_to_rpc(value: Any) -> Any:
    if value is None:
        return jsnull
    if isinstance(value, _BindingWrapper):
        return value._binding
    value = _none_to_jsnull(value)
    _raise_on_disabled_type(value)
    return to_js(value, default_converter=_to_rpc_default,
                 dict_converter=fake_js.object_from_entries)


# --------------------------------------------------------------------------- bindings


class _BindingWrapper:
    def __init__(self, binding: Any) -> None:
        self._binding = binding

    def _wrap(self, value: Any) -> Any:
        if not isinstance(value, JsProxy) or value.constructor.name in _PASSTHROUGH:
            return value
        return _BindingWrapper(value)

    def _convert_result(self, result: Any) -> Any:
        converted = python_from_rpc(result)
        if isinstance(converted, list):
            return [self._wrap(item) for item in converted]
        return self._wrap(converted)

    def _invoke(self, fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        js_args = [python_to_rpc(arg) for arg in args]
        if kwargs:  # Pyodide passes Python kwargs to JS as one trailing options object (§6.5)
            js_args.append(fake_js.JsObject({k: python_to_rpc(v) for k, v in kwargs.items()}))
        result = fn(*js_args)
        if hasattr(result, "then") and callable(result.then):

            async def settle() -> Any:
                return self._convert_result(await result)

            return settle()
        return self._convert_result(result)

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._binding, name)
        if callable(attr):
            def method(*args: Any, **kwargs: Any) -> Any:
                return self._invoke(attr, args, kwargs)

            result: Any = method
        else:
            result = self._convert_result(attr)
        # Like the SDK, every attribute is cached after its first read, values included: a
        # property that changes (sql.databaseSize) keeps its first value through `.name`.
        setattr(self, name, result)
        return result

    def __getitem__(self, key: Any) -> Any:
        # The SDK's subscript reads afresh, without caching.
        if isinstance(key, int):
            return self._convert_result(self._binding[key])
        return self._convert_result(getattr(self._binding, key))

    def __iter__(self) -> Any:
        if not hasattr(self._binding, "__iter__"):
            raise TypeError(f"'{self._binding.constructor.name}' object is not iterable")
        for item in self._binding:
            yield self._convert_result(item)


class _FetcherWrapper(_BindingWrapper):
    def fetch(self, *args: Any, **kwargs: Any) -> Any:
        return fetch(*args, fetcher=self._binding.fetch, **kwargs)


class _DurableObjectNamespaceWrapper:
    def __init__(self, binding: Any) -> None:
        self._binding = binding

    def __getattr__(self, name: str) -> Any:
        return getattr(self._binding, name)

    def get(self, *args: Any) -> _FetcherWrapper:
        return _FetcherWrapper(self._binding.get(*args))

    def getByName(self, *args: Any) -> _FetcherWrapper:
        return _FetcherWrapper(self._binding.getByName(*args))


def _idempotent_new(cls: type, obj: Any) -> Any:
    """Wrapping twice returns the first wrapper (the SDK's `_idempotent_new`)."""
    return obj if isinstance(obj, cls) else object.__new__(cls)


class _EnvWrapper:
    __new__ = _idempotent_new  # type: ignore[assignment]

    def __init__(self, env: Any) -> None:
        if env is self:
            return
        self._env = env

    def __getattr__(self, name: str) -> Any:
        binding = getattr(self._env, name)  # undefined -> AttributeError
        if _is_js_instance(binding, "Fetcher"):
            result: Any = _FetcherWrapper(binding)
        elif _is_js_instance(binding, "DurableObjectNamespace"):
            result = _DurableObjectNamespaceWrapper(binding)
        elif _is_js_instance(binding, "D1Database") or _is_js_instance(binding, "R2Bucket"):
            result = _BindingWrapper(binding)  # rpc.py wraps these, converting in and out
        else:
            result = binding  # vars and secrets are plain str
        setattr(self, name, result)
        return result


class DurableObjectContext:
    """``ctx`` for a DO: every attribute passes through raw, except ``storage`` (§1.3)."""

    __new__ = _idempotent_new  # type: ignore[assignment]

    def __init__(self, ctx: Any) -> None:
        if ctx is self:
            return
        self._ctx = ctx

    def __getattr__(self, name: str) -> Any:
        result = getattr(self._ctx, name)
        if _is_js_instance(result, "DurableObjectStorage"):
            result = _BindingWrapper(result)
        setattr(self, name, result)
        return result


# --------------------------------------------------------------------------- fetch API


class _HTTPMessageMapping(http.client.HTTPMessage, Mapping[str, str]):  # type: ignore[misc]
    pass


def _headers_message(js_headers: Any) -> _HTTPMessageMapping:
    # python_request_headers_preserve_commas is on from 2026-02-17 (§1.5).
    message = _HTTPMessageMapping()
    for key, value in js_headers:
        message.add_header(key, value.strip())
    return message


def _to_js_headers(headers: Any) -> Any:
    js = fake_js
    if isinstance(headers, list):
        return js.Headers(headers)  # the SDK passes the Python list itself (a PyProxy)
    if isinstance(headers, dict):
        return js.Headers(headers.items())
    if _is_js_instance(headers, "Headers"):
        return headers
    raise TypeError("Received unexpected type for headers argument")


class Request:
    def __init__(self, input: Any, **options: Any) -> None:
        if _is_js_instance(input, "Request") and not options:
            self._js_request = input
            return
        if "headers" in options:
            options["headers"] = _to_js_headers(options["headers"])
        source = input._js_request if isinstance(input, Request) else input
        init = fake_js.JsObject(options) if options else None
        self._js_request = fake_js.Request.construct(source, init)

    @property
    def js_object(self) -> Any:
        return self._js_request

    @property
    def url(self) -> str:
        return str(self._js_request.url)

    @property
    def method(self) -> HTTPMethod:
        return HTTPMethod[self._js_request.method]

    @property
    def headers(self) -> _HTTPMessageMapping:
        return _headers_message(self._js_request.headers)

    async def text(self) -> str:
        return str(await self._js_request.text())

    async def bytes(self) -> bytes:
        buffer = await self._js_request.arrayBuffer()
        return bytes(buffer.to_bytes())


class Response:
    def __init__(self, body: Any = None, status: int | None = None, status_text: str = "",
                 headers: Any = None, web_socket: Any = None) -> None:
        if _is_js_instance(body, "Response"):
            if status is not None or status_text or headers is not None:
                raise ValueError("Expected no options with a js.Response")
            self._js_response = body
            return
        if isinstance(body, JsProxy):
            if body.constructor.name not in _PASSTHROUGH:
                raise TypeError(f"Unsupported type in Response: {body.constructor.name}")
        elif body is not None and not isinstance(body, str | bytes):
            raise TypeError(f"Unsupported type in Response: {type(body).__name__}")
        options: dict[str, Any] = {}
        if status:
            options["status"] = int(status)
        if status_text:
            options["statusText"] = status_text
        if headers:
            options["headers"] = _to_js_headers(headers)
        if web_socket:
            options["webSocket"] = web_socket
        js_body = fake_js.Uint8Array(body) if isinstance(body, bytes) else body
        # js.Response.new(js_body, **options): kwargs become one trailing options object.
        self._js_response = fake_js.Response.construct(js_body, fake_js.JsObject(options))

    @property
    def js_object(self) -> Any:
        return self._js_response

    @property
    def status(self) -> int:
        return int(self._js_response.status)

    @property
    def headers(self) -> _HTTPMessageMapping:
        return _headers_message(self._js_response.headers)

    async def text(self) -> str:
        return str(await self._js_response.text())

    async def json(self) -> Any:
        return json.loads(await self.text())


async def fetch(resource: Any, **options: Any) -> Response:
    """`workers.fetch` -> pyodide's pyfetch with a custom fetcher (SDK fetch.py)."""
    if isinstance(resource, Request):
        resource = resource.js_object
    fetcher = options.pop("fetcher", None) or fake_js._outbound_fetch
    init = to_js(options, dict_converter=fake_js.object_from_entries)
    js_response = await fetcher(resource, init)
    return Response(js_response)


# --------------------------------------------------------------------------- entrypoints


def _wrap_class(cls: type) -> type:
    original_init = cls.__dict__.get("__init__")
    if original_init is None:
        return cls

    def wrapped_init(self: Any, *args: Any, **kwargs: Any) -> None:
        args_list = list(args)
        if args_list and issubclass(cls, DurableObject):
            args_list[0] = DurableObjectContext(args_list[0])
        if len(args_list) > 1:
            args_list[1] = _EnvWrapper(args_list[1])
        original_init(self, *args_list, **kwargs)

    cls.__init__ = wrapped_init  # type: ignore[misc]
    return cls


class DurableObject:
    def __init__(self, ctx: Any, env: Any) -> None:
        self.ctx = ctx
        self.env = env

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _wrap_class(cls)


class WorkerEntrypoint:
    def __init__(self, ctx: Any, env: Any) -> None:
        self.ctx = ctx
        self.env = env

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _wrap_class(cls)


_wrap_class(DurableObject)
_wrap_class(WorkerEntrypoint)


def build_module() -> types.ModuleType:
    module = types.ModuleType("workers")
    module.__dict__.update(
        DurableObject=DurableObject,
        WorkerEntrypoint=WorkerEntrypoint,
        Request=Request,
        Response=Response,
        fetch=fetch,
        python_from_rpc=python_from_rpc,
        python_to_rpc=python_to_rpc,
        JsDict=JsDict,
    )
    return module
