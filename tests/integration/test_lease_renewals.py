"""Leases renewed by the process's one renewing thread (pipeline.LeaseKeeper, _Renewals)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from discovery.engine import pipeline
from discovery.engine.ledger import Request, Task
from sandbox.people import JANE
from tests.helpers import sandbox_world, wait_until

pytestmark = pytest.mark.integration


def _merging(world: dict[str, Any]) -> str:
    """A request in its merge, under the lease of "owner-1" (lapsing now)."""
    rt = world["rt"]
    rid = pipeline.submit(rt, world["wake"], "access", JANE.email).request.id
    with rt.sessions.begin() as s:
        req = s.get(Request, rid)
        assert req is not None
        req.status, req.lease_owner, req.lease_until = "merging", "owner-1", rt.clock()
    return str(rid)


def test_every_live_lease_is_renewed_and_none_after_stop(tmp_path: Path) -> None:
    with sandbox_world(tmp_path) as world:
        rt = world["rt"]
        rid = _merging(world)
        with rt.sessions.begin() as s:
            task = Task(request_id=rid, system="accounts", action="export", entities=[], status="running",
                        lease_until=rt.clock())
            s.add(task)
            s.flush()
            task_id = task.id

        def leases() -> tuple[object, object]:
            with rt.sessions() as s:
                return (s.scalar(sa.select(Request.lease_until).where(Request.id == rid)),
                        s.scalar(sa.select(Task.lease_until).where(Task.id == task_id)))

        start = leases()
        # Two holders with different leases, renewed side by side by one thread (every 0.1 s and 0.2 s).
        phase = pipeline.LeaseKeeper(rt, rid, timedelta(seconds=0.3), owner="owner-1")
        running = pipeline.LeaseKeeper(rt, task_id, timedelta(seconds=0.6))
        try:
            wait_until(lambda: all(now != then for now, then in zip(leases(), start, strict=True)), 20,
                       "both leases renewed")
        finally:
            phase.stop()
            running.stop()
        stopped = leases()
        other = pipeline.LeaseKeeper(rt, rid, timedelta(seconds=0.3), owner="owner-1")  # keeps the thread busy
        try:
            wait_until(lambda: leases()[0] != stopped[0], 20, "the live one renewed")
            assert leases()[1] == stopped[1]  # the stopped task lease was not renewed again
        finally:
            other.stop()


def test_a_lease_due_sooner_than_the_thread_looks_wakes_it(tmp_path: Path) -> None:
    """The renewing thread is woken only when a new lease is due before it would look again (not for every lease,
    three per request): one added while it waits for a long lease must still be renewed on time."""
    with sandbox_world(tmp_path) as world:
        rt = world["rt"]
        rid = _merging(world)
        start = rt.clock()
        slow = pipeline.LeaseKeeper(rt, "no-such-request", timedelta(seconds=90), owner="x")  # looked at in 30 s
        try:
            wait_until(lambda: pipeline._RENEWALS._wake_at > 0, 5, "the renewing thread waiting")
            quick = pipeline.LeaseKeeper(rt, rid, timedelta(seconds=0.6), owner="owner-1")  # due in 0.2 s
            try:
                def renewed() -> bool:
                    with rt.sessions() as s:
                        until = s.scalar(sa.select(Request.lease_until).where(Request.id == rid))
                    return until is not None and until.replace(tzinfo=None) > start.replace(tzinfo=None)

                wait_until(renewed, 10, "the quick lease renewed while the thread waited for the slow one")
            finally:
                quick.stop()
        finally:
            slow.stop()
