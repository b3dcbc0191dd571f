"""The fake behind `import pyodide` and `from pyodide.ffi import ...`: Pyodide's conversions.

`to_js` follows Pyodide's type-conversion rules (docs/cloudflare.md §6.2):
lists and tuples become Arrays, dicts become Maps unless a ``dict_converter`` is given, bytes
become a Uint8Array, JS values and primitives pass through, and anything else stays a PyProxy
(or goes to ``default_converter``).
"""

from __future__ import annotations

import types
from collections.abc import Callable
from typing import Any

from tests.cloudflare import fake_js
from tests.cloudflare.fake_js import JsArray, JsMap, JsProxy, Uint8Array, is_primitive


class PyProxy:
    """A Python callable handed to JS with `create_proxy`; JS may call it until destroyed."""

    def __init__(self, obj: Callable[..., Any]) -> None:
        self._obj = obj
        self.destroyed = False

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.destroyed:
            raise fake_js.JsException("Error", "This borrowed proxy was automatically destroyed")
        return self._obj(*args, **kwargs)

    def destroy(self) -> None:
        self.destroyed = True


def create_proxy(obj: Callable[..., Any], **_: Any) -> PyProxy:
    return PyProxy(obj)


def to_js(
    value: Any,
    *,
    depth: int = -1,
    dict_converter: Callable[[Any], Any] | None = None,
    default_converter: Callable[..., Any] | None = None,
    **_: Any,
) -> Any:
    def convert(item: Any) -> Any:
        return to_js(item, depth=depth, dict_converter=dict_converter,
                     default_converter=default_converter)

    if is_primitive(value) or isinstance(value, JsProxy | PyProxy):
        return value
    if isinstance(value, list | tuple):
        return JsArray(convert(item) for item in value)
    if isinstance(value, dict):
        entries = [(convert(k), convert(v)) for k, v in value.items()]
        if dict_converter is not None:
            return dict_converter(JsArray(JsArray(pair) for pair in entries))
        return JsMap(entries)
    if isinstance(value, bytes | bytearray | memoryview):
        return Uint8Array(bytes(value))
    if default_converter is not None:
        return default_converter(value, convert, lambda *_: None)
    return value  # stays a PyProxy


def build_modules() -> tuple[types.ModuleType, types.ModuleType]:
    """The `pyodide` package and its `pyodide.ffi` submodule."""
    ffi = types.ModuleType("pyodide.ffi")
    ffi.__dict__.update(
        to_js=to_js,
        create_proxy=create_proxy,
        JsProxy=JsProxy,
        JsException=fake_js.JsException,
        jsnull=fake_js.jsnull,
    )
    package = types.ModuleType("pyodide")
    package.__path__ = []  # a package, so `import pyodide.ffi` resolves through sys.modules
    package.__dict__.update(ffi=ffi, __version__="314.0.6")
    return package, ffi
