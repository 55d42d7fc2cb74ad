"""Discovery never hangs a request (issue 10, point 5): one system's locate failing, by any exception, is recorded
against that system and the request cannot claim completeness; a discovery that cannot finish fails the request
once, with a one-line reason, instead of being re-run for ever."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import timedelta
from pathlib import Path

import sqlalchemy as sa

from connectors.base import Connector, EntityPolicy, Health, Hits, Identities, Receipt, Record
from discovery.engine import db, pipeline
from discovery.engine.ledger import AuditEvent, Request, SystemHit
from discovery.engine.runtime import Runtime
from discovery.engine.settings import load_settings
from tests.conftest import SECRET, write_config
from tests.helpers import SyncWakeups


class Fake(Connector):
    entities = ("thing",)

    def __init__(self, name: str, locate_fails: Exception | None = None, policies_fail: bool = False) -> None:
        self.name, self.locate_fails, self.policies_fail = name, locate_fails, policies_fail

    def locate(self, identities: Identities) -> Hits:
        if self.locate_fails:
            raise self.locate_fails
        return Hits(self.name, True, {"thing": 1})

    def policies(self) -> dict[str, EntityPolicy]:
        if self.policies_fail:
            raise RuntimeError("policy table broken\nwith a second line naming p@example.no")
        return super().policies()

    def export(self, identities: Identities, entities: Iterable[str] | None = None) -> Iterator[Record]:
        yield Record("thing", "1", {"colour": "green"})

    def erase(self, identities: Identities, entities: Iterable[str] | None = None) -> Receipt:
        return Receipt(self.name, "erase", changed={"thing": 1})

    restrict = lift_restriction = erase

    def check(self) -> Health:
        return Health(self.name, True)


def make(tmp_path: Path, *connectors: Fake) -> Runtime:
    (tmp_path / "datamap.yaml").write_text(
        "controller: {name: Test AS, contact: dpo@example.no}\n"
        "systems: {accounts: {kind: sql, enabled: false, url_env: X, entities: {}}}\n")
    config = write_config(tmp_path, f"sqlite:///{tmp_path / 'ledger.db'}")
    rt = Runtime(load_settings(config, {"DSAR_SECRET_KEY": SECRET}), env={})
    db.upgrade(rt.engine)
    rt._connectors = {c.name: c for c in connectors}
    return rt


def test_an_unexpected_locate_error_is_that_systems_and_the_request_ends_with_errors(tmp_path: Path) -> None:
    refused = OSError("connection refused\nSELECT * FROM users WHERE email = 'p@example.no'")
    rt = make(tmp_path, Fake("broken", locate_fails=refused), Fake("fine"))
    wake = SyncWakeups(rt)
    request_id = pipeline.submit(rt, wake, "access", "p@example.no").request.id
    wake.drain()
    with rt.sessions() as s:
        req = s.get(Request, request_id)
        hits = {h.system: h for h in s.scalars(sa.select(SystemHit).where(SystemHit.request_id == request_id))}
    assert hits["broken"].error == "OSError: connection refused"  # the first line only: no statement, no e-mail
    assert hits["fine"].found and hits["fine"].error is None
    assert req is not None and req.status == "completed_with_errors"
    assert req.error is not None and req.error.startswith("broken locate: OSError: connection refused")


def test_a_discovery_that_cannot_finish_fails_the_request_once(tmp_path: Path) -> None:
    rt = make(tmp_path, Fake("odd", policies_fail=True))
    wake = SyncWakeups(rt)
    request_id = pipeline.submit(rt, wake, "erasure", "p@example.no").request.id
    wake.drain()
    with rt.sessions() as s:
        req = s.get(Request, request_id)
        events = [e.event for e in s.scalars(sa.select(AuditEvent).where(AuditEvent.request_id == request_id))]
    assert req is not None and req.status == "failed" and req.open_key is None
    assert req.error == "discovery failed: RuntimeError: policy table broken"
    assert events.count("request.failed") == 1
    assert pipeline.sweep(rt, wake, stale_after=timedelta(0)) == {  # nothing left to re-wake
        "expired_leases": 0, "pending_tasks": 0, "discover": 0, "merge": 0}
