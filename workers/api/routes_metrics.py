"""GET /metrics: Prometheus text, computed from the ledger at each scrape (a handful of aggregate queries).

Every number is read from the ledger when scraped, not counted in this process, so every `dsar serve` process
answers alike and nothing is lost at a restart. The price is in the task-duration histogram: it is made from the
tasks the ledger holds now (started_at to finished_at of each finished task), so it is a snapshot, not a counter
that only grows: a retried task leaves it until it finishes again. `histogram_quantile()` over it is fine; `rate()`
of its buckets mostly is. Dramatiq's own metrics come from the workers (worker.prometheus_port; docs/console.md).
No label carries personal data: types, statuses, system and action names only.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from discovery.engine.ledger import OPEN_STATUSES, ScheduledAction, Task, TaskStatus
from discovery.engine.ledger import Request as LedgerRequest
from discovery.engine.runtime import Runtime
from workers.api.deps import RT

router = APIRouter()

# seconds; tasks run from well under a second (an SQL export) to many minutes (a vendor's job, a slow API)
BUCKETS = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)
_MIN_LATE = timedelta(minutes=5)


def _seconds(dialect: str) -> sa.ColumnElement[Any]:
    """finished_at - started_at in seconds, in the ledger's SQL dialect."""
    if dialect == "sqlite":
        return (sa.func.julianday(Task.finished_at) - sa.func.julianday(Task.started_at)) * 86400.0
    return sa.func.date_part("epoch", Task.finished_at - Task.started_at)  # double precision (extract: numeric)


class LedgerCollector(Collector):
    def __init__(self, rt: Runtime, now: datetime) -> None:
        self.rt, self.now = rt, now

    def collect(self) -> Iterator[Metric]:
        now, rt = self.now, self.rt
        is_open = LedgerRequest.status.in_(list(OPEN_STATUSES))
        # a scheduler polls every poll_interval_seconds: an action due for three polls (5 minutes at least) is late
        late = max(_MIN_LATE, timedelta(seconds=3 * rt.settings.schedule.poll_interval_seconds))
        seconds = _seconds(rt.engine.dialect.name)
        with rt.sessions() as s:
            by_status = s.execute(sa.select(LedgerRequest.type, LedgerRequest.status, sa.func.count())
                                  .group_by(LedgerRequest.type, LedgerRequest.status)).all()
            opened, overdue, bundles, bundle_bytes = s.execute(sa.select(
                sa.func.count().filter(is_open), sa.func.count().filter(is_open, LedgerRequest.due_at < now),
                sa.func.count(LedgerRequest.bundle_size), sa.func.coalesce(sa.func.sum(LedgerRequest.bundle_size), 0),
            )).one()
            tasks = s.execute(sa.select(Task.system, Task.action, Task.status, sa.func.count())
                              .group_by(Task.system, Task.action, Task.status)).all()
            # each task's bucket (the index of the first bound it fits under) once, then counted per bucket
            ran = sa.select(Task.system, Task.action, seconds.label("s")).where(
                Task.started_at.is_not(None), Task.finished_at.is_not(None),
                Task.status.in_([TaskStatus.DONE, TaskStatus.FAILED])).subquery()
            bucket = sa.case(*((ran.c.s <= b, i) for i, b in enumerate(BUCKETS)), else_=len(BUCKETS))
            durations = s.execute(sa.select(ran.c.system, ran.c.action, bucket, sa.func.count(), sa.func.sum(ran.c.s))
                                  .group_by(ran.c.system, ran.c.action, bucket)).all()
            scheduled = ScheduledAction.status == "scheduled"
            actions = s.execute(sa.select(
                sa.func.count().filter(scheduled), sa.func.count().filter(scheduled, ScheduledAction.due_at <= now),
                sa.func.count().filter(scheduled, ScheduledAction.due_at <= now - late),
                sa.func.count().filter(ScheduledAction.status == "failed"))).one()

        requests = GaugeMetricFamily("dsar_requests", "Requests in the ledger by type and status.",
                                     labels=["type", "status"])
        for rtype, status, n in by_status:
            requests.add_metric([rtype, status], n)
        yield requests
        yield GaugeMetricFamily("dsar_requests_open", "Open requests.", value=opened)
        yield GaugeMetricFamily("dsar_requests_overdue", "Open requests past their due date.", value=overdue)

        by_outcome = GaugeMetricFamily("dsar_tasks", "Tasks in the ledger by system, action and status (outcome).",
                                       labels=["system", "action", "status"])
        manual = GaugeMetricFamily("dsar_manual_steps_open", "Tasks waiting for a person to confirm a manual step.",
                                   labels=["system"])
        waiting: dict[str, int] = {}
        for system, action, status, n in tasks:
            by_outcome.add_metric([system, action, status], n)
            if status == TaskStatus.AWAITING_MANUAL:
                waiting[system] = waiting.get(system, 0) + n
        for system, n in sorted(waiting.items()):
            manual.add_metric([system], n)
        yield by_outcome
        yield manual

        hist = HistogramMetricFamily("dsar_task_duration_seconds", "How long finished tasks ran (started_at to "
                                     "finished_at), per system and action, over the tasks the ledger holds.",
                                     labels=["system", "action"])
        per: dict[tuple[str, str], tuple[list[int], float]] = {}
        for system, action, index, n, total in durations:
            counts, seconds_sum = per.get((system, action), ([0] * (len(BUCKETS) + 1), 0.0))
            counts[index] += n
            per[(system, action)] = (counts, seconds_sum + float(total or 0.0))
        for (system, action), (counts, seconds_sum) in sorted(per.items()):
            cumulative = [sum(counts[:i + 1]) for i in range(len(counts))]
            buckets = [(_le(b), float(n)) for b, n in zip(BUCKETS, cumulative, strict=False)]
            hist.add_metric([system, action], [*buckets, ("+Inf", float(cumulative[-1]))], seconds_sum)
        yield hist

        pending, due, late_n, failed = actions
        sched = GaugeMetricFamily("dsar_scheduled_actions", "Scheduled actions by state: waiting (not due yet), due "
                                  "(due, not run), overdue (due longer than three scheduler polls), failed.",
                                  labels=["state"])
        for state, n in (("waiting", pending - due), ("due", due), ("overdue", late_n), ("failed", failed)):
            sched.add_metric([state], n)
        yield sched
        yield GaugeMetricFamily("dsar_scheduled_actions_due", "Scheduled actions whose time has come, not run yet.",
                                value=due)
        yield GaugeMetricFamily("dsar_scheduled_actions_overdue", "Scheduled actions due for longer than three "
                                "scheduler polls (at least 5 minutes): is `dsar scheduler` running?", value=late_n)
        yield GaugeMetricFamily("dsar_bundle_bytes_written", "Bytes of the bundles the ledger records as written "
                                "(expired and deleted ones included).", value=bundle_bytes)
        yield GaugeMetricFamily("dsar_bundles_written", "Bundles the ledger records as written.", value=bundles)


def _le(bound: float) -> str:
    return repr(float(bound))


def render(rt: Runtime) -> bytes:
    return generate_latest(LedgerCollector(rt, rt.clock()))  # type: ignore[arg-type]


# Not in the OpenAPI document: a scrape target, like /readyz. Open like /healthz: counts only, no personal data.
@router.get("/metrics", tags=["operations"], include_in_schema=False)
def metrics(rt: RT) -> Response:
    return Response(render(rt), media_type=CONTENT_TYPE_LATEST)
