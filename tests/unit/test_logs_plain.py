"""The `dsar worker` supervisor writes its log lines without structlog (workers/logs.configure_plain_logging, issue
15: importing structlog costs it ~15 MB); its lines must read exactly as structlog's chain renders them."""

from __future__ import annotations

import io
import re
import sys
from typing import Any

import pytest
import structlog

from workers import logs

EVENTS: list[tuple[str, str, dict[str, Any]]] = [
    ("info", "supervisor.started", {"processes": 2, "threads": 4, "pid": 123}),
    ("warning", "worker.restarting", {"slot": 0, "pid": 5, "how": "killed by SIGKILL", "ran_s": 1.5,
                                      "restart_in_s": 2.0}),
    ("error", "supervisor.gave_up.with.an.event.name.longer.than.thirty", {"how": "exit code 3", "times": 5}),
    ("info", "odd.values", {"none": None, "flag": True, "eq": "a=b", "quote": 'q"x', "mail": "jane@example.com",
                            "tab": "a\tb", "empty": ""}),
    ("info", "no.values", {}),
]
STAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z")


def _without_stamps(text: str) -> list[str]:
    return [STAMP.sub("<ts>", line) for line in text.splitlines()]


def _lines(monkeypatch: pytest.MonkeyPatch, configure: Any, fmt: str) -> str:
    """What the supervisor's logger writes after `configure(fmt)`, into a stream of its own."""
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    configure(fmt, level=20)
    logger = logs.ProcessLogger("workers.supervisor")
    for method, event, kw in EVENTS:
        getattr(logger, method)(event, **kw)
    logger.debug("below.the.level", x=1)
    return err.getvalue()


@pytest.mark.parametrize("fmt", ["console", "json"])
def test_plain_lines_are_structlogs_lines(fmt: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(logs, "_configure_stdlib", lambda quiet: None)  # the root handler keeps its stream
    saved = structlog.get_config()
    try:
        structured = _lines(monkeypatch, logs.configure_logging, fmt)
        plain = _lines(monkeypatch, logs.configure_plain_logging, fmt)
    finally:
        structlog.configure(**saved)
        monkeypatch.setattr(logs, "_plain", None)
    assert len(_without_stamps(structured)) == len(EVENTS)
    assert "<email>" in structured and "jane@example.com" not in plain  # both scrub
    assert _without_stamps(plain) == _without_stamps(structured)
