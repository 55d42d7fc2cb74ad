"""Dramatiq actors: thin wrappers over discovery.engine.pipeline. The ledger holds the state; messages only wake.

Run them with `dsar worker` (or `dramatiq workers.actors`). Every actor is idempotent: a
redelivered or duplicated message finds the work done or claimed and returns.
"""

from __future__ import annotations

import threading
from typing import Any

import dramatiq
import structlog
from dramatiq.middleware import Middleware

from discovery.engine import pipeline
from discovery.engine.bundles import expire_bundles
from workers import app

log = structlog.get_logger(__name__)
app.ensure_broker()
_cfg = app.settings().worker
_RETRY: dict[str, Any] = {
    "max_retries": _cfg.max_attempts,
    "min_backoff": int(_cfg.retry_backoff_seconds * 1000),
    "max_backoff": int(max(_cfg.retry_backoff_seconds, 1) * 60_000),
    "time_limit": 6 * 3600 * 1000,  # exports of long chat histories take a while; leases catch dead workers
}


class ActorWakeups:
    def discover(self, request_id: str) -> None:
        discover.send(request_id)

    def execute(self, task_id: int) -> None:
        execute.send(task_id)

    def merge(self, request_id: str) -> None:
        merge.send(request_id)


WAKE = ActorWakeups()


class MergeInline(ActorWakeups):
    """For the task that finishes a request: merge in the same worker thread instead of another trip
    through the queue (one less wait for a consumer). If the merge fails, the merge actor retries it;
    the sweeper catches anything lost."""

    def merge(self, request_id: str) -> None:
        try:
            pipeline.merge_request(app.runtime(), request_id)
        except Exception:
            log.exception("merge.inline_failed", request_id=request_id)
            merge.send(request_id)


MERGE_INLINE = MergeInline()


@dramatiq.actor(queue_name="dsar", **_RETRY)  # type: ignore[call-overload, misc]
def discover(request_id: str) -> None:
    pipeline.run_discovery(app.runtime(), WAKE, request_id)


@dramatiq.actor(queue_name="dsar", **_RETRY)  # type: ignore[call-overload, misc]
def execute(task_id: int) -> None:
    pipeline.execute_task(app.runtime(), MERGE_INLINE, task_id)


@dramatiq.actor(queue_name="dsar", **_RETRY)  # type: ignore[call-overload, misc]
def merge(request_id: str) -> None:
    pipeline.merge_request(app.runtime(), request_id)


class Sweeper(Middleware):
    """Runs the sweeper in a worker process: re-wakes work whose message was lost."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def after_worker_boot(self, broker: dramatiq.Broker, worker: Any) -> None:
        self._thread = threading.Thread(target=self._loop, name="dsar-sweeper", daemon=True)
        self._thread.start()

    def before_worker_shutdown(self, broker: dramatiq.Broker, worker: Any) -> None:
        self._stop.set()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                pipeline.sweep(app.runtime(), WAKE)
            except Exception:
                log.exception("sweep.failed")
            try:  # bundles past archive.retention_days are deleted and the deletion audited
                expire_bundles(app.runtime())
            except Exception:
                log.exception("bundle.expire_failed")


def add_sweeper() -> None:
    broker = app.ensure_broker()
    if not any(isinstance(m, Sweeper) for m in broker.middleware):
        broker.add_middleware(Sweeper(app.settings().worker.sweep_interval_seconds))


if app.os_env_flag("DSAR_SWEEPER"):
    add_sweeper()
