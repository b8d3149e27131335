"""What the HTTP layer writes to the log, made safe and short.

- `printable(text)`: text from a client with its control characters escaped, so that a NUL, an
  escape sequence or a newline in a path can neither reach a terminal raw nor forge a log line.
- `configure_logging(level, format)`: the root handler of `nebula serve` and of each worker,
  in text (one line per record) or JSON (one object per line: time, level, logger, message,
  the fields a record carries in `extra={"fields": ...}` such as the access line's, and the
  worker's index and pid).
- `ProtocolLog`: the logger handed to aiohttp's connection handler. aiohttp logs every request it
  cannot parse (a port scanner, TLS spoken to the plain port, a truncated chunk) with a full
  traceback at ERROR; one INFO line with the peer and the reason is what it is worth. Anything
  else it logs (a bug) keeps its traceback.

Imports nothing of Nebula.
"""

from __future__ import annotations

import json
import logging
import os
import re
from datetime import UTC, datetime
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


class JsonFormatter(logging.Formatter):
    """One JSON object per record; its `fields` (a dict passed as extra) are merged in."""

    def __init__(self, worker: int | None = None) -> None:
        super().__init__()
        self.worker = worker

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            doc.update({k: v for k, v in fields.items() if k not in doc})
        if self.worker is not None:
            doc["worker"] = self.worker
            doc["pid"] = os.getpid()
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


def formatter(log_format: str, worker: int | None = None) -> logging.Formatter:
    """The formatter of `log_format` ("text" or "json")."""
    if log_format == "json":
        return JsonFormatter(worker)
    where = "" if worker is None else f"[worker {worker} pid {os.getpid()}] "
    return logging.Formatter(f"%(asctime)s %(levelname)s {where}%(name)s: %(message)s")


def configure_logging(level: str, log_format: str, worker: int | None = None) -> None:
    """The root logger at `level`, writing to stderr in `log_format`."""
    handler = logging.StreamHandler()
    handler.setFormatter(formatter(log_format, worker))
    logging.basicConfig(level=level.upper(), handlers=[handler])
