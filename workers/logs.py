"""Structured logs (structlog) with a last-line scrub of personal data and secrets.

Below INFO (the CLI without -v) an exception is one line (its type and first line), never a traceback: a person
at a terminal reads what failed, `-v` or a worker's log shows the traceback.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

from connectors.redact import redact


def _scrub(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    # Code never logs personal data on purpose; this catches what slips through (an exception text).
    for key, value in list(event.items()):
        if isinstance(value, str):
            event[key] = redact(value)
    return event


def exception_line(exc: BaseException) -> str:
    """`Type: first line of the message`, scrubbed: driver errors carry the statement and its values further down."""
    first = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
    return redact(f"{type(exc).__name__}: {first}" if first else type(exc).__name__)[:300]


def _one_line_exc(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    exc_info = event.pop("exc_info", None)
    event.pop("stack_info", None)
    if exc_info is True:
        exc_info = sys.exc_info()
    exc = exc_info if isinstance(exc_info, BaseException) else (exc_info[1] if isinstance(exc_info, tuple) else None)
    if exc is not None:
        event.setdefault("error", exception_line(exc))
    return event


class _OneLineRecords(logging.Filter):
    """The same for libraries logging through `logging` (Dramatiq's "Failed to process message ...")."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None:
            record.msg, record.args = f"{record.getMessage()} ({exception_line(record.exc_info[1])})", None
        record.exc_info = record.exc_text = record.stack_info = None
        return True


def configure_logging(fmt: str = "console", level: int | None = None) -> None:
    if level is None:
        level = logging.getLevelName(os.environ.get("DSAR_LOG_LEVEL", "INFO").upper())
        level = level if isinstance(level, int) else logging.INFO
    quiet = level > logging.INFO
    renderer: Any = structlog.processors.JSONRenderer() if fmt == "json" else structlog.dev.ConsoleRenderer(
        colors=False)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _one_line_exc if quiet else structlog.processors.format_exc_info,
            _scrub,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    for handler in logging.getLogger().handlers:
        for old in [f for f in handler.filters if isinstance(f, _OneLineRecords)]:
            handler.removeFilter(old)
        if quiet:
            handler.addFilter(_OneLineRecords())
