"""Hold ends are scheduled when the hold is applied (issue 10, point 6), not when the whole request completes:
Mautic and Matomo always leave a manual step, and the held invoices must not wait for someone to confirm it."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa

from discovery.engine import pipeline
from discovery.engine.ledger import AuditEvent, Request, Task
from discovery.engine.runtime import Ended, TaskOutcome
from discovery.schedule import scheduler
from sandbox.people import JANE
from tests.helpers import sandbox_world


def test_the_hold_end_erasure_exists_while_the_request_awaits_a_manual_step(tmp_path: Path) -> None:
    with sandbox_world(tmp_path) as world:
        rt, wake = world["rt"], world["wake"]
        rt.task_hooks.append(scheduler.record_task_hold_ends)  # as workers.app.setup registers them
        rt.completion_hooks.append(scheduler.record_hold_ends)
        request_id = pipeline.submit(rt, wake, "erasure", JANE.email).request.id
        wake.drain()
        with rt.sessions() as s:
            req = s.get(Request, request_id)
            assert req is not None and req.status == "awaiting_manual"
            manual = sorted(set(s.scalars(sa.select(Task.system).where(Task.request_id == request_id,
                                                                       Task.status == "awaiting_manual"))))
        assert manual  # a person still has to do something: the request is far from complete

        actions = scheduler.list_actions(rt, email=JANE.email)  # one per day a hold ends (Jane has two orders)
        assert len(actions) == 2
        for action in actions:
            assert action.kind == scheduler.KIND_HOLD_END and action.source_request_id == request_id
            assert action.details["systems"] == ["accounts"] and action.due_at > rt.clock()
            assert {h["entity"] for h in action.details["holds"]} == {"orders"}

        for system in manual:
            pipeline.confirm_manual(rt, wake, request_id, system, "done in the vendor's admin page", "operator")
        wake.drain()
        with rt.sessions() as s:
            req = s.get(Request, request_id)
            assert req is not None and req.status in ("completed", "completed_with_errors")
            events = [e.event for e in s.scalars(sa.select(AuditEvent).where(AuditEvent.request_id == request_id))]
        # The completion hook ran too, and made nothing twice.
        again = scheduler.list_actions(rt, email=JANE.email)
        assert [(a.id, a.details) for a in again] == [(a.id, a.details) for a in actions]
        assert events.count("schedule.created") == 2 and "schedule.repeated" not in events
        assert "request.hook_failed" not in events and "task.hook_failed" not in events


def test_two_systems_holding_until_the_same_day_share_one_action(tmp_path: Path) -> None:
    with sandbox_world(tmp_path) as world:
        rt = world["rt"]
        request_id = pipeline.submit(rt, world["wake"], "erasure", JANE.email).request.id
        hold = {"entity": "orders", "records": 2, "until": "2031-03-01T00:00:00+00:00", "reason": "bookkeeping"}
        with rt.sessions.begin() as s:
            for system in ("accounts", "billing"):
                s.add(Task(request_id=request_id, system=system, action="erase", entities=["orders"],
                           status="done", result={"changed": {}, "held": [hold]}))
        with rt.sessions() as s:
            tasks = list(s.scalars(sa.select(Task).where(Task.request_id == request_id).order_by(Task.id)))
            outcomes = [TaskOutcome(t.id, request_id, t.system, t.action, t.status, t.result) for t in tasks]
            ended = Ended.of(s.get(Request, request_id))
        rt._connectors = {**rt.connectors(), "billing": rt.connector("accounts")}
        for outcome in outcomes:
            scheduler.record_task_hold_ends(rt, outcome)
        scheduler.record_hold_ends(rt, ended)
        (action,) = scheduler.list_actions(rt, email=JANE.email)
        assert action.details["systems"] == ["accounts", "billing"]
        assert sorted(h["system"] for h in action.details["holds"]) == ["accounts", "billing"]
        assert "accounts.orders" in action.reason and "billing.orders" in action.reason
