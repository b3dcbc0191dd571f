"""HTTP glue shared by the front Worker and the Room: SDK requests in, SDK responses out.

Everything here goes through the `workers` SDK (`Request`, `Response`), which converts for us
(docs/cloudflare.md §1.5, §6.3), except a request's headers, read through `ffi` in one crossing;
nothing touches `js` directly.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl

from workers import Response

from objects import ffi
from rooms.front import HttpReply, error_reply

INTERNAL_ERROR = error_reply(500, "internal", "internal error")


def reply_response(reply: HttpReply) -> Response:
    """The SDK response for a platform-free `HttpReply`."""
    return Response(reply.body, status=reply.status, headers=list(reply.headers))


def request_method(request: Any) -> str:
    """The request's method as sent (``Request.method`` raises for names outside HTTPMethod)."""
    return str(request.js_object.method)


def lower_headers(request: Any) -> dict[str, str]:
    """A request's headers keyed by lower-case name (``rooms.front`` expects that).

    Read from the JS request in one crossing (`ffi.header_dict`), not through the SDK's
    ``Request.headers``, which builds an `http.client.HTTPMessage` on every access.
    """
    return ffi.header_dict(request.js_object.headers)


def query_params(query: str) -> dict[str, str]:
    """The first value of each query parameter."""
    params: dict[str, str] = {}
    for name, value in parse_qsl(query, keep_blank_values=True):
        params.setdefault(name, value)
    return params


def emit(line: str) -> None:
    """Write one log line; on Workers, stdout is the console that observability collects."""
    print(line, flush=True)


def log_failure(handler: str, exc: BaseException, **fields: str) -> None:
    """One JSON line for an unexpected exception: where and what type, never its message.

    Messages can carry tokens, SQL or a Python traceback (a JS error's message does, §2.6).
    """
    record: Mapping[str, str] = {
        "event": "unexpected_error",
        "handler": handler,
        "error": type(exc).__name__,
        **fields,
    }
    emit(json.dumps(record, separators=(",", ":")))
