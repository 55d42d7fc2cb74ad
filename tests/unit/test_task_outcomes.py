"""How a task ends: transient errors retried with the attempt counted, permanent ones failed clearly."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from connectors.base import (
    Connector,
    Health,
    Hits,
    Identities,
    PermanentError,
    Receipt,
    Record,
    TransientError,
    UnsupportedAction,
)
from discovery.engine import db, pipeline
from discovery.engine.ledger import Request, Task
from discovery.engine.runtime import Runtime
from discovery.engine.settings import load_settings
from tests.conftest import SECRET, write_config


class Flaky(Connector):
    name = "flaky"
    entities = ("thing",)

    def __init__(self, failures: list[Exception]) -> None:
        self.failures = failures
        self.calls = 0

    def _maybe_fail(self) -> None:
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)

    def locate(self, identities: Identities) -> Hits:
        return Hits(self.name, True, {"thing": 1})

    def export(self, identities: Identities, entities: Iterable[str] | None = None) -> Iterator[Record]:
        self._maybe_fail()
        yield Record("thing", "1", {"colour": "green"})

    def erase(self, identities: Identities, entities: Iterable[str] | None = None) -> Receipt:
        self._maybe_fail()
        return Receipt(self.name, "erase", changed={"thing": 1}, manual_steps=["press the red button"])

    def restrict(self, identities: Identities, entities: Iterable[str] | None = None) -> Receipt:
        raise UnsupportedAction(self.name, "this system cannot restrict processing")

    def lift_restriction(self, identities: Identities, entities: Iterable[str] | None = None) -> Receipt:
        raise UnsupportedAction(self.name, "nothing to lift")

    def check(self) -> Health:
        return Health(self.name, True)


class Queue:
    def __init__(self) -> None:
        self.items: list[tuple[str, Any]] = []

    def discover(self, request_id: str) -> None:
        self.items.append(("discover", request_id))

    def execute(self, task_id: int) -> None:
        self.items.append(("execute", task_id))

    def merge(self, request_id: str) -> None:
        self.items.append(("merge", request_id))


def make(tmp_path: Path, failures: list[Exception], max_attempts: int = 3) -> tuple[Runtime, Queue, Flaky]:
    (tmp_path / "datamap.yaml").write_text(
        "controller: {name: Test AS, contact: dpo@example.no}\n"
        "systems: {accounts: {kind: sql, enabled: false, url_env: X, entities: {}}}\n")
    config = write_config(tmp_path, f"sqlite:///{tmp_path / 'ledger.db'}", max_attempts=max_attempts)
    rt = Runtime(load_settings(config, {"DSAR_SECRET_KEY": SECRET}), env={})
    db.upgrade(rt.engine)
    flaky = Flaky(failures)
    rt._connectors = {"flaky": flaky}
    return rt, Queue(), flaky


def run_request(rt: Runtime, queue: Queue, request_type: str) -> int:
    """Submit and plan; return the id of the one task the plan makes."""
    submitted = pipeline.submit(rt, queue, request_type, "p@example.no")
    pipeline.run_discovery(rt, queue, submitted.request.id)
    with rt.sessions() as s:
        return s.scalars(sa.select(Task.id).where(Task.request_id == submitted.request.id)).one()


def task(rt: Runtime, task_id: int) -> Task:
    with rt.sessions() as s:
        t = s.get(Task, task_id)
        assert t is not None
        return t


def test_transient_failures_are_retried_then_succeed(tmp_path: Path) -> None:
    rt, queue, flaky = make(tmp_path, [TransientError("flaky", "HTTP 503"), TransientError("flaky", "timeout")])
    task_id = run_request(rt, queue, "access")
    for attempt in (1, 2):
        with pytest.raises(pipeline.RetryLater, match="flaky export"):
            pipeline.execute_task(rt, queue, task_id)
        t = task(rt, task_id)
        assert (t.status, t.attempts) == ("pending", attempt)
    pipeline.execute_task(rt, queue, task_id)
    t = task(rt, task_id)
    assert (t.status, t.attempts, flaky.calls) == ("done", 3, 3)
    assert t.result is not None and t.result["entities"]["thing"]["records"] == 1
    assert queue.items[-1][0] == "merge"


def test_transient_failures_give_up_after_max_attempts(tmp_path: Path) -> None:
    rt, queue, _ = make(tmp_path, [TransientError("flaky", "HTTP 503")] * 5, max_attempts=2)
    task_id = run_request(rt, queue, "access")
    with pytest.raises(pipeline.RetryLater):
        pipeline.execute_task(rt, queue, task_id)
    pipeline.execute_task(rt, queue, task_id)
    t = task(rt, task_id)
    assert t.status == "failed" and t.error == "gave up after 2 attempts: HTTP 503"
    pipeline.merge_request(rt, t.request_id)
    with rt.sessions() as s:
        req = s.get(Request, t.request_id)
        assert req is not None and req.status == "completed_with_errors"
        assert req.error == "flaky export: gave up after 2 attempts: HTTP 503"


def test_permanent_failure_fails_at_once_with_the_reason(tmp_path: Path) -> None:
    rt, queue, flaky = make(tmp_path, [PermanentError("flaky", "GET /users answered HTTP 401")])
    task_id = run_request(rt, queue, "access")
    pipeline.execute_task(rt, queue, task_id)
    t = task(rt, task_id)
    assert (t.status, t.attempts, flaky.calls) == ("failed", 1, 1)
    assert t.error == "GET /users answered HTTP 401"


def test_manual_steps_wait_for_confirmation_and_unsupported_is_reported(tmp_path: Path) -> None:
    rt, queue, _ = make(tmp_path, [])
    task_id = run_request(rt, queue, "erasure")
    pipeline.execute_task(rt, queue, task_id)
    t = task(rt, task_id)
    assert t.status == "awaiting_manual"
    with rt.sessions() as s:
        assert s.get(Request, t.request_id).status == "awaiting_manual"  # type: ignore[union-attr]
    with pytest.raises(pipeline.InvalidInput, match="no task awaiting a manual step in system 'other'"):
        pipeline.confirm_manual(rt, queue, t.request_id, "other", "done", "op")
    assert pipeline.confirm_manual(rt, queue, t.request_id, "flaky", "pressed it", "op") == 1
    assert task(rt, task_id).status == "done" and queue.items[-1] == ("merge", t.request_id)

    task_id = run_request(rt, queue, "restriction")
    pipeline.execute_task(rt, queue, task_id)
    t = task(rt, task_id)
    assert t.status == "unsupported" and t.error == "this system cannot restrict processing"

