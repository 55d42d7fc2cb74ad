"""A merge killed between storing its bundle and recording it leaves a whole copy of the person's data that no ledger
row names (the soak benchmark, a worker child killed mid-merge: two bundle files for one request). The merge that
takes over removes it."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import sqlalchemy as sa

from discovery.bundle.archive import archive_store
from discovery.engine import pipeline
from discovery.engine.ledger import Request
from tests.integration.hang_worker import Fine
from tests.integration.test_phase_leases import EMAIL, Recorded, request_row, runtime

pytestmark = pytest.mark.integration


def test_the_merge_taking_over_removes_the_dead_merges_bundle(tmp_path: Path,
                                                               pg_database: Callable[[], str]) -> None:
    rt = runtime(tmp_path, pg_database(), Fine("fine"))
    wake = Recorded(rt)
    request_id = pipeline.submit(rt, wake, "access", EMAIL).request.id
    wake.drain()
    assert request_row(rt, request_id).status == "merging"
    # The dead merge: it held the lease (lapsed now) and stored its bundle, but never recorded it.
    dead = "deadbeef-0000-4000-8000-000000000000"
    store = archive_store(rt.settings, rt.env)
    orphan = store.uri_for(pipeline.bundle_key(request_id, dead))
    with store.writer(pipeline.bundle_key(request_id, dead)) as out:
        out.write(b"PK a whole bundle of the person's data")
    with rt.sessions.begin() as s:
        s.execute(sa.update(Request).where(Request.id == request_id).values(
            lease_owner=dead, lease_until=pipeline._now(rt) - timedelta(seconds=1)))
    assert store.exists_uri(orphan)

    built = pipeline.merge_request(rt, request_id)

    assert built is not None
    req = request_row(rt, request_id)
    assert req.status == "completed" and req.bundle_path == built.uri and store.exists_uri(built.uri)
    assert not store.exists_uri(orphan)
    stored = Path(urlsplit(req.bundle_path).path)
    assert sorted(p.name for p in stored.parent.iterdir()) == [stored.name]  # one bundle for one request
    rt.close()
