"""Structured logs (structlog) with a last-line scrub of personal data and secrets.

Below INFO (the CLI without -v) an exception is one line (its type and first line), never a traceback: a person
at a terminal reads what failed, `-v` or a worker's log shows the traceback.

structlog is imported only by `configure_logging` and by a `ProcessLogger` writing through it: importing structlog
imports asyncio (and ssl) and, when it is installed, rich, ~15 MB the `dsar worker` supervisor does not otherwise
need (issue 15). The supervisor writes the same lines with `configure_plain_logging` instead.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import MutableMapping
from datetime import UTC, datetime
from typing import Any

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


def refuse_rich() -> None:
    """Make `import rich` fail in this process (call it before structlog is first imported; a no-op after rich).

    `import structlog` imports rich whenever it is installed (structlog.dev and structlog.tracebacks, for pretty
    tracebacks), ~4.5 MB per process, and no setting avoids it. `configure_logging`'s chain renders exceptions
    before the renderer (format_exc_info, or one line), so rich would never run; dsar does not depend on it (the dev
    extras bring it, with schemathesis). Only for long-running processes of our own (a `dsar worker` child), never
    in-process in tests or a library user's program, where something else may want rich."""
    sys.modules.setdefault("rich", None)  # type: ignore[arg-type]


def _level(level: int | None) -> int:
    if level is None:
        level = logging.getLevelName(os.environ.get("DSAR_LOG_LEVEL", "INFO").upper())
        level = level if isinstance(level, int) else logging.INFO
    return level


def configure_logging(fmt: str = "console", level: int | None = None) -> None:
    import structlog

    global _plain
    _plain = None
    level = _level(level)
    quiet = level > logging.INFO
    renderer: Any = structlog.processors.JSONRenderer() if fmt == "json" else structlog.dev.ConsoleRenderer(
        colors=False)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            _one_line_exc if quiet else structlog.processors.format_exc_info,
            _scrub,
            # after the scrub: a timestamp has colons, so every line's ran all of redact()'s patterns for nothing
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        # One write per line (PrintLogger's print() makes two: the line, then its newline). Unbuffered, as in our
        # image (PYTHONUNBUFFERED=1), each is a system call of its own, and two worker processes sharing stderr
        # wrote one line into the middle of another.
        logger_factory=structlog.WriteLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    _configure_stdlib(quiet)


def _configure_stdlib(quiet: bool) -> None:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    for handler in logging.getLogger().handlers:
        for old in [f for f in handler.filters if isinstance(f, _OneLineRecords)]:
            handler.removeFilter(old)
        if quiet:
            handler.addFilter(_OneLineRecords())


# -- the same lines without structlog (the `dsar worker` supervisor) ---------------------------------------------

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR,
           "critical": logging.CRITICAL}
_LEVEL_WIDTH = len("exception")  # ConsoleRenderer pads the level to its longest level name
_EVENT_WIDTH = 30  # ... and the event to this (its pad_event_to default)


class _PlainRenderer:
    """One event rendered as `configure_logging`'s chain renders it (add_log_level, _scrub, TimeStamper(iso, utc),
    then ConsoleRenderer(colors=False) or JSONRenderer), for events carrying plain values and no exc_info.
    tests/unit/test_logs_plain.py compares the two."""

    def __init__(self, fmt: str, level: int) -> None:
        self.json, self.level = fmt == "json", level

    def line(self, method: str, event: str, kw: dict[str, Any]) -> str:
        event_dict = dict(_scrub(None, method, {**kw, "event": event, "level": method}))
        event_dict["timestamp"] = datetime.now(tz=UTC).isoformat().replace("+00:00", "Z")
        if self.json:
            return json.dumps(event_dict, default=repr)
        head = [str(event_dict.pop("timestamp")), f"[{event_dict.pop('level').ljust(_LEVEL_WIDTH)}]",
                str(event_dict.pop("event")).ljust(_EVENT_WIDTH)]
        return " ".join(head + [f"{key}={_repr(event_dict[key])}" for key in sorted(event_dict)]).rstrip(" ")


def _repr(value: Any) -> str:
    """ConsoleRenderer's value: a string as it is unless it holds a blank, `=` or a quote; anything else repr()."""
    if isinstance(value, str) and not set(value) & {" ", "\t", "=", "\r", "\n", '"', "'"}:
        return value
    return repr(value)


_plain: _PlainRenderer | None = None


def configure_plain_logging(fmt: str = "console", level: int | None = None) -> None:
    """`configure_logging`'s output for this process's `ProcessLogger`s, without importing structlog."""
    global _plain
    _plain = _PlainRenderer(fmt, _level(level))
    _configure_stdlib(_plain.level > logging.INFO)


class ProcessLogger:
    """A logger for modules that run both in structlog processes and in the plain one (workers/supervisor.py):
    `info` / `warning` / `error` / `debug` with an event and plain keyword values, rendered by whichever of
    `configure_logging` / `configure_plain_logging` this process called."""

    def __init__(self, name: str) -> None:
        self.name = name

    def _log(self, method: str, event: str, kw: dict[str, Any]) -> None:
        if _plain is None:
            import structlog

            getattr(structlog.get_logger(self.name), method)(event, **kw)
        elif _LEVELS[method] >= _plain.level:
            sys.stderr.write(_plain.line(method, event, kw) + "\n")  # one write per line, as configure_logging's
            sys.stderr.flush()

    def debug(self, event: str, **kw: Any) -> None:
        self._log("debug", event, kw)

    def info(self, event: str, **kw: Any) -> None:
        self._log("info", event, kw)

    def warning(self, event: str, **kw: Any) -> None:
        self._log("warning", event, kw)

    def error(self, event: str, **kw: Any) -> None:
        self._log("error", event, kw)
