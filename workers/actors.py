"""Dramatiq actors: thin wrappers over discovery.engine.pipeline. The ledger holds the state; messages only wake.

Run them with `dsar worker` (or `dramatiq workers.actors`). Every actor is idempotent: a
redelivered or duplicated message finds the work done or claimed and returns.

No poison messages: only a transient failure (the ledger away, a task released for a later attempt) goes back to
the broker, as `dramatiq.Retry` (retried with backoff up to worker.max_attempts, no traceback). The pipeline records
any other failure where it belongs (the task or request failed, with a one-line reason) and the message is
acknowledged; a message for an unknown request or task is dropped with a warning.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import dramatiq
import structlog
from dramatiq.common import compute_backoff
from dramatiq.middleware import Middleware

from discovery.engine import ledger_retention, pipeline
from discovery.engine.bundles import expire_bundles
from discovery.intake import outbox
from workers import app, heartbeat
from workers.turns import IntervalTurn

log = structlog.get_logger(__name__)
app.ensure_broker()
_cfg = app.settings().worker
# broker.namespace, read once: actors are declared once per process, after its settings are loaded
QUEUE = app.queue_name()
_RETRY: dict[str, Any] = {
    "max_retries": _cfg.max_attempts,
    "min_backoff": int(_cfg.retry_backoff_seconds * 1000),
    "max_backoff": int(max(_cfg.retry_backoff_seconds, 1) * 60_000),
    "time_limit": 6 * 3600 * 1000,  # exports of long chat histories take a while; leases catch dead workers
}


def task_backoff_ms(attempt: int) -> int:
    """How long a task waits after its `attempt`-th attempt failed: Dramatiq's backoff (doubling from
    worker.retry_backoff_seconds, with jitter) for that many failures."""
    return compute_backoff(attempt - 1, factor=_RETRY["min_backoff"], max_backoff=_RETRY["max_backoff"])[1]


class ActorWakeups:
    def discover(self, request_id: str) -> None:
        discover.send(request_id)

    def execute(self, task_id: int) -> None:
        execute.send(task_id)

    def merge(self, request_id: str) -> None:
        merge.send(request_id)


WAKE = ActorWakeups()


# What a worker thread runs itself rather than sending on: tasks of quick local systems (planned by its discovery)
# and the merge of a request whose last task ended here (discovery/engine/pipeline.py InlineWakeups).
INLINE = pipeline.InlineWakeups(app.runtime, WAKE)


def handle(event: str, work: Callable[[], object], permanent: Callable[[str], None] | None = None,
           **ids: Any) -> None:
    """Run one message's work: retry only what is transient; drop unknown ids; anything else is logged once (and
    handed to `permanent`, which records it) and the message acknowledged, never redelivered for ever."""
    try:
        work()
    except pipeline.NotFoundError as exc:
        log.warning(f"{event}.dropped", why=str(exc), **ids)
    except Exception as exc:
        error = pipeline.one_line(exc)
        if pipeline.is_transient(exc):
            # a task released for a later attempt was logged by the pipeline already
            (log.info if isinstance(exc, pipeline.RetryLater) else log.warning)(f"{event}.retry", error=error, **ids)
            # retried with backoff, counted against max_retries; a task's retry waits by its attempt, not by this
            # message's retries: a task that first ran inline in a discovery is retried by that message once, then
            # by its own, whose count starts again (attempts came twice as fast as worker.max_attempts implies)
            attempt = exc.attempt if isinstance(exc, pipeline.RetryLater) else 0
            raise dramatiq.Retry(error, delay=task_backoff_ms(attempt) if attempt else None) from None
        log.error(f"{event}.failed", error=error, **ids)
        if permanent is not None:
            permanent(error)


@dramatiq.actor(queue_name=QUEUE, **_RETRY)  # type: ignore[call-overload, misc]
def discover(request_id: str) -> None:
    handle("discover", lambda: pipeline.run_discovery(app.runtime(), INLINE, request_id), request_id=request_id)


@dramatiq.actor(queue_name=QUEUE, **_RETRY)  # type: ignore[call-overload, misc]
def execute(task_id: int) -> None:
    # A failure the task could not record (its second, minimal write failed too) leaves it running: the sweeper
    # takes it over when its lease expires, and a task started more than max_attempts times is failed.
    handle("execute", lambda: pipeline.execute_task(app.runtime(), INLINE, task_id), task_id=task_id)


@dramatiq.actor(queue_name=QUEUE, **_RETRY)  # type: ignore[call-overload, misc]
def merge(request_id: str) -> None:
    handle("merge", lambda: pipeline.merge_request(app.runtime(), request_id),
           lambda error: _merge_failed(request_id, error), request_id=request_id)


def _merge_failed(request_id: str, error: str) -> None:
    try:
        pipeline.merge_failed(app.runtime(), request_id, error)
    except Exception as exc:  # the ledger is away: the sweeper re-wakes the merge later
        log.warning("merge.failure_not_recorded", request_id=request_id, error=pipeline.one_line(exc))


class Sweeper(Middleware):
    """Runs the sweeper in a worker process: re-wakes work whose message was lost. One process of the deployment
    sweeps per interval (workers/turns.py); without a Redis, each does."""

    def __init__(self, interval: float, redis_url: str | None = None, namespace: str = "dsar") -> None:
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.turn = IntervalTurn("sweeper", interval, redis_url, namespace)

    def after_worker_boot(self, broker: dramatiq.Broker, worker: Any) -> None:
        self._thread = threading.Thread(target=self._loop, name="dsar-sweeper", daemon=True)
        self._thread.start()

    def before_worker_shutdown(self, broker: dramatiq.Broker, worker: Any) -> None:
        self._stop.set()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            if not self.turn.mine():
                continue
            try:
                pipeline.sweep(app.runtime(), WAKE)
            except Exception:
                log.exception("sweep.failed")
            try:  # bundles past archive.retention_days are deleted and the deletion audited
                expire_bundles(app.runtime())
            except Exception:
                log.exception("bundle.expire_failed")
            # subjects' e-mails and identifiers leave the ledger ledger.retention_days after their request ended
            ledger_retention.sweep(app.runtime())
            # ticket notes and callbacks not delivered yet: a pass in its own thread (a slow receiver holds up nothing)
            outbox.sweep(app.runtime())


def add_sweeper() -> None:
    broker = app.ensure_broker()
    if not any(isinstance(m, Sweeper) for m in broker.middleware):
        settings = app.settings()
        broker.add_middleware(Sweeper(settings.worker.sweep_interval_seconds, settings.redis_url, QUEUE))


if app.os_env_flag("DSAR_SWEEPER"):
    add_sweeper()
if app.os_env_flag("DSAR_WORKER_METRICS"):  # set by `dsar worker` with worker.metrics_port (workers/supervisor.py)
    from dramatiq.middleware.prometheus import Prometheus

    if not any(isinstance(m, Prometheus) for m in app.ensure_broker().middleware):
        app.ensure_broker().add_middleware(Prometheus())
# each worker process says it is alive (workers/heartbeat.py), under its namespace
heartbeat.install(app.ensure_broker(), namespace=QUEUE, redis_url=app.settings().redis_url)
