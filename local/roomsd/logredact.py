"""Keep tokens out of logs: aiohttp logs raw request lines when a client sends garbage."""

from __future__ import annotations

import logging
import re

_TOKEN = re.compile(r"(token=|Bearer\s+|eyJ)[A-Za-z0-9._~%+/=-]+")


class RedactTokens(logging.Filter):
    """Replace anything that looks like a token, and drop tracebacks of client errors."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        record.msg = _TOKEN.sub(lambda m: f"{m.group(1)}[redacted]", message)
        record.args = None
        record.exc_info = None
        record.exc_text = None
        return True


def install() -> None:
    for name in ("aiohttp.server", "aiohttp.web", "aiohttp.access", "aiohttp.websocket"):
        logging.getLogger(name).addFilter(RedactTokens())
