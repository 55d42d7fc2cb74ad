"""No poison messages (issue 10, point 5): a real Dramatiq worker on a test-owned Redis database, and on the test
run's own RabbitMQ vhost, and a PostgreSQL ledger.

A task whose outcome cannot be stored fails once with a one-line reason and is never run again (neither Dramatiq's
retries nor the sweeper's lease take-over bring it back); messages for unknown ids are dropped with a warning.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from discovery.engine import db, pipeline
from discovery.engine.ledger import OPEN_STATUSES, AuditEvent, Request, Task
from discovery.engine.runtime import Runtime
from discovery.engine.settings import load_settings
from tests.conftest import ROOT, SECRET, BrokerWakeups, write_config
from tests.helpers import wait_until

pytestmark = pytest.mark.integration


@pytest.fixture
def stack(tmp_path: Path, pg_database: Callable[[], str], broker_url: str) -> Iterator[dict[str, Any]]:
    (tmp_path / "datamap.yaml").write_text(
        "controller: {name: Test AS, contact: dpo@example.no}\n"
        "systems: {accounts: {kind: sql, enabled: false, url_env: X, entities: {}}}\n")
    config = write_config(tmp_path, pg_database(), broker_url, task_lease_seconds=5, sweep_interval_seconds=0.5,
                          retry_backoff_seconds=0.2, max_attempts=3)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DSAR_")}
    env.update({"DSAR_SECRET_KEY": SECRET, "PYTHONUNBUFFERED": "1", "DSAR_LOG_LEVEL": "INFO"})
    rt = Runtime(load_settings(config, env), env=env)
    db.upgrade(rt.engine)
    log_path = tmp_path / "worker.log"
    with log_path.open("wb") as log:
        worker = subprocess.Popen([sys.executable, "-m", "tests.integration.poison_worker", str(config)], env=env,
                                  cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    wake = BrokerWakeups(rt.settings)
    try:
        wait_until(lambda: b"worker ready" in log_path.read_bytes() or worker.poll() is not None, 60, "the worker")
        assert worker.poll() is None, log_path.read_text()
        yield {"rt": rt, "wake": wake, "log": log_path}
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGTERM)
            try:
                worker.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(worker.pid, signal.SIGKILL)
                worker.wait()
        wake.close()
        rt.close()




def queued(wake: BrokerWakeups) -> dict[str, int]:
    """Messages still held by the broker: waiting, delayed for a retry, or dead-lettered (in the namespace's queue)."""
    names = ("queue", "delayed", "dead")
    if wake.broker.__class__.__name__ == "RabbitmqBroker":
        return dict(zip(names, wake.broker.get_queue_message_counts(wake.queue), strict=True))
    client = wake.broker.client  # type: ignore[attr-defined]
    keys = (wake.queue, f"{wake.queue}.DQ", f"{wake.queue}.XQ")
    return {n: int(client.hlen(f"{wake.queue}:dramatiq:{q}.msgs")) for n, q in zip(names, keys, strict=True)}


NOTHING_QUEUED = {"queue": 0, "delayed": 0, "dead": 0}


def test_a_result_that_cannot_be_stored_fails_the_task_once_and_is_never_retried(stack: dict[str, Any]) -> None:
    rt = stack["rt"]
    request_id = pipeline.submit(rt, stack["wake"], "erasure", "p@example.no").request.id

    def closed() -> Request | None:
        with rt.sessions() as s:
            req = s.get(Request, request_id)
            return req if req is not None and req.status not in OPEN_STATUSES else None

    req = wait_until(closed, 60, "the request to close")
    assert req.status == "completed_with_errors"
    # Longer than a lease and several sweeps: a task left running would be taken over and run again by now.
    time.sleep(7)
    with rt.sessions() as s:
        (task,) = s.scalars(sa.select(Task).where(Task.request_id == request_id)).all()
        events = [e.event for e in s.scalars(sa.select(AuditEvent).where(AuditEvent.request_id == request_id))]
    assert task.status == "failed" and task.attempts == 1
    assert task.error.startswith("internal error: could not store the result: ") and "\n" not in task.error
    assert "datetime" in task.error and "not JSON serializable" in task.error
    assert events.count("task.failed") == 1 and events.count("request.completed") == 1
    assert queued(stack["wake"]) == NOTHING_QUEUED
    log = stack["log"].read_text()
    assert "task.store_failed" in log and "Traceback" not in log


def test_messages_for_unknown_ids_are_dropped_with_a_warning(stack: dict[str, Any]) -> None:
    wake = stack["wake"]
    wake.discover("no-such-request")
    wake.execute(987654)
    wake.merge("no-such-merge")
    for line in ("discover.dropped", "execute.dropped", "merge.dropped"):
        wait_until(lambda line=line: line in stack["log"].read_text(), 30, line)  # type: ignore[misc]
    time.sleep(2)  # a retried message would come back within the 0.2 s backoff
    log = stack["log"].read_text()
    assert log.count("discover.dropped") == log.count("execute.dropped") == log.count("merge.dropped") == 1
    assert "unknown request no-such-request" in log and "unknown task 987654" in log
    assert "Traceback" not in log and "Retrying message" not in log
    assert queued(stack["wake"]) == NOTHING_QUEUED
