"""What the HTTP layer writes to the log, made safe and short.

- `printable(text)`: text from a client with its control characters escaped, so that a NUL, an
  escape sequence or a newline in a path can neither reach a terminal raw nor forge a log line.
- `ProtocolLog`: the logger handed to aiohttp's connection handler. aiohttp logs every request it
  cannot parse (a port scanner, TLS spoken to the plain port, a truncated chunk) with a full
  traceback at ERROR; one INFO line with the peer and the reason is what it is worth. Anything
  else it logs (a bug) keeps its traceback.

Imports nothing of Nebula.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError

log = logging.getLogger("nebula.web.http")

# C0 controls, DEL and C1 controls, and the Unicode line/paragraph separators.
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_SPACES = re.compile(r"\s*\n\s*")
MAX_REASON = 200  # characters of a parse error kept in its log line


def printable(text: object) -> str:
    """`text` with every control character written as an escape (\\x00, \\n, ...)."""
    return _UNPRINTABLE.sub(lambda m: m.group().encode("unicode_escape").decode(), str(text))


def client_error(exc: BaseException | None) -> bool:
    """Whether `exc` is a client's malformed HTTP (request head or body), not a bug of ours."""
    return isinstance(exc, HttpProcessingError | RequestPayloadError)


def reason(exc: BaseException) -> str:
    """aiohttp's multi-line parse error (message, the offending bytes, a caret) on one line."""
    message = exc.message if isinstance(exc, HttpProcessingError) else str(exc)
    text = printable(_SPACES.sub(" ", str(message)).strip())
    return text if len(text) <= MAX_REASON else text[:MAX_REASON] + "..."


class ProtocolLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """aiohttp's server logger, with a client's malformed request as one INFO line."""

    def __init__(self) -> None:
        super().__init__(logging.getLogger("aiohttp.server"), {})

    def exception(self, msg: object, *args: object, exc_info: Any = True, **kwargs: Any) -> None:
        if client_error(exc_info):
            # aiohttp passes the peer's address as the one argument of its parse errors.
            peer = printable(args[0]) if args else "a client"
            log.info("malformed HTTP request from %s: %s", peer, reason(exc_info))
            return
        self.logger.exception(msg, *args, exc_info=exc_info, **kwargs)
