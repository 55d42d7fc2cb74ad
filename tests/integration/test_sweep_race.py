"""The sweeper never writes back a stale copy of a request (the soak benchmark: with a backlog, 67 of 2,200
requests that had just completed were put back to `merging` by a sweep that had read them as `running`; the second
merge found their staging gone and failed them)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from discovery.engine import pipeline
from discovery.engine.ledger import Request
from tests.integration.hang_worker import Fine
from tests.integration.test_phase_leases import EMAIL, Recorded, request_row, runtime

pytestmark = pytest.mark.integration


def test_a_request_finished_while_the_sweep_looks_stays_finished(tmp_path: Path,
                                                                 pg_database: Callable[[], str]) -> None:
    rt = runtime(tmp_path, pg_database(), Fine("fine"))
    wake = Recorded(rt)
    request_id = pipeline.submit(rt, wake, "access", EMAIL).request.id
    wake.drain()
    # The state a lost "last task done" wake-up leaves: every task terminal, the request still running, idle.
    with rt.sessions.begin() as s:
        s.execute(sa.update(Request).where(Request.id == request_id).values(
            status="running", updated_at=pipeline._now(rt) - timedelta(hours=1)))

    finisher = rt.sessions()  # a worker finishing the request right now: it holds the row
    finisher.begin()
    req = finisher.get(Request, request_id, with_for_update=True)
    assert req is not None
    req.status = "completed"
    finisher.flush()

    swept = Recorded(rt)
    done: list[dict[str, int]] = []
    sweeper = threading.Thread(target=lambda: done.append(pipeline.sweep(rt, swept, stale_after=timedelta(0))))
    sweeper.start()
    sweeper.join(5)  # the sweep must not wait for (or later overwrite) a row another process holds
    finisher.commit()
    finisher.close()
    sweeper.join(20)

    assert done and done[0]["merge"] == 0 and swept.merges == []
    assert request_row(rt, request_id).status == "completed"
    rt.close()
