"""structlog set-up: JSON lines in containers and pipes, readable lines in a terminal.

vecmirror's own events are stable snake_case names with fields (`batch_synced`, mirror=…, rows=…).
Records of other libraries (the standard `logging` module) and Python warnings go through the same
renderer, so in JSON mode every line on stderr parses. A URL's password never reaches a line: the
settings hold URLs as secrets, and `redact_urls` masks any `scheme://user:password@` that a driver's
message might still quote.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

# Third-party libraries speak at INFO about routine things (model loading, connections).
LIBRARY_LEVEL = logging.WARNING
_URL_PASSWORD = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^/@\s:]*):[^/@\s]*@")
_QUERY_PASSWORD = re.compile(r"(?i)([?&](?:password|sslpassword)=)[^&\s]*")


def redact(text: str) -> str:
    """`postgresql://user:secret@host` → `postgresql://user:***@host`, and `?password=secret` →
    `?password=***` (libpq's URLs may carry it there)."""
    return _QUERY_PASSWORD.sub(r"\1***", _URL_PASSWORD.sub(r"\1:***@", text))


def redact_urls(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for name, value in event.items():
        if isinstance(value, str):
            event[name] = redact(value)
    return event


def renders_json(log_format: str) -> bool:
    """Whether VECMIRROR_LOG_FORMAT=log_format gives JSON lines (auto: when stderr is no terminal)."""
    return log_format == "json" or (log_format == "auto" and not sys.stderr.isatty())


def configure_logging(log_format: str = "auto", level: str = "info") -> None:
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if renders_json(log_format) else structlog.dev.ConsoleRenderer()
    )
    threshold = logging.getLevelNamesMapping()[level.upper()]
    stamp = structlog.processors.TimeStamper(fmt="iso", utc=True)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            stamp,
            structlog.processors.format_exc_info,
            redact_urls,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(threshold),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    _route_standard_logging(renderer, stamp, max(threshold, LIBRARY_LEVEL))


def _route_standard_logging(
    renderer: structlog.typing.Processor, stamp: structlog.typing.Processor, level: int
) -> None:
    """Library records and warnings rendered like vecmirror's own events (with a `logger` field)."""
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.stdlib.add_log_level, structlog.stdlib.add_logger_name, stamp],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            redact_urls,
            renderer,
        ],
    )
    handler = _StderrHandler()
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(level)
    logging.captureWarnings(True)


class _StderrHandler(logging.Handler):
    """Writes to whatever sys.stderr is when a record comes, like structlog's PrintLogger does."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            print(self.format(record), file=sys.stderr, flush=True)
        except Exception:  # logging's own convention: a broken stream must not break the caller
            self.handleError(record)
