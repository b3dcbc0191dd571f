"""Our error shape for the requests aiohttp refuses before any handler runs.

aiohttp answers a request it cannot parse (a non-ASCII byte in the request line, a header too
long, a bad method) itself, in text/plain, and that text quotes what it could not parse: a
request line carries the query string, so the client's token came back in the body. Every
error the server controls uses `{"error": {"code", "message"}}` (docs/protocol.md), with a
fixed message that quotes nothing.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from rooms.front import error_reply

# What a client gets for each status aiohttp may answer with; anything else is ours to explain.
_CODES: dict[int, tuple[str, str]] = {
    HTTPStatus.BAD_REQUEST: ("bad_request", "the request could not be parsed"),
    HTTPStatus.REQUEST_ENTITY_TOO_LARGE: ("body_too_large", "the request body is too large"),
    HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE: ("headers_too_large", "a header is too large"),
    HTTPStatus.NOT_IMPLEMENTED: ("not_implemented", "this request is not supported"),
}
_INTERNAL = ("internal", "internal error")
_original = RequestHandler.handle_error


def _handle_error(
    self: RequestHandler,
    request: Any,
    status: int = 500,
    exc: BaseException | None = None,
    message: str | None = None,
) -> web.StreamResponse:
    _original(self, request, status, exc, None)  # logs (redacted) and checks nothing was sent
    code, text = _CODES.get(status, _INTERNAL)
    reply = error_reply(status, code, text)
    response = web.Response(status=reply.status, body=reply.body, headers=dict(reply.headers))
    response.force_close()
    return response


def install() -> None:
    """Answer aiohttp's own refusals in our JSON shape (idempotent; this process only)."""
    RequestHandler.handle_error = _handle_error  # type: ignore[method-assign]
