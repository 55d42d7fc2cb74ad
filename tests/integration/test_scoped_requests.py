"""Requests limited to some systems: only those are asked and changed, the others are listed as out of
scope; hold-end erasures act only in the systems whose records were held. Real sockets: the account
database (SQLite) and the four vendor simulators, driven in-process through the pipeline."""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from discovery.bundle.archive import local_path
from discovery.engine import pipeline
from discovery.engine.ledger import Request, ScheduledAction, SystemHit
from discovery.engine.runtime import Runtime
from discovery.intake.api_tokens import create_token
from discovery.schedule import scheduler
from sandbox.people import JANE
from tests.helpers import rows, sandbox_world
from workers.api import create_app

pytestmark = pytest.mark.integration

class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def world(tmp_path: Path) -> Iterator[dict[str, Any]]:
    clock = Clock(datetime.now(UTC))
    with sandbox_world(tmp_path, now=clock) as world:
        world["rt"].completion_hooks.append(scheduler.record_hold_ends)  # as workers.app.setup registers it
        yield {**world, "clock": clock}


def load(rt: Runtime, request_id: str) -> Request:
    with rt.sessions() as s:
        req = s.get(Request, request_id)
        assert req is not None
        req.tasks  # noqa: B018 - load the tasks while the session is open
        return req


def jane_in_accounts(engine: sa.Engine) -> dict[str, Any]:
    return rows(engine, f"SELECT * FROM users WHERE id = {JANE.account_id}")[0]


def test_a_scoped_erasure_changes_only_the_named_systems(world: dict[str, Any]) -> None:
    rt, wake, sandbox = world["rt"], world["wake"], world["sandbox"]
    before = sandbox.holdings(JANE.email)
    user_before = jane_in_accounts(world["accounts"])

    submitted = pipeline.submit(rt, wake, "erasure", JANE.email, ticket="T-SCOPE", actor="test",
                                systems=["mautic", "salesmanago"])
    wake.drain()
    req = load(rt, submitted.request.id)
    assert req.systems == ["mautic", "salesmanago"]
    assert {t.system for t in req.tasks} == {"mautic", "salesmanago"}

    after = sandbox.holdings(JANE.email)
    assert after["salesmanago"] == {} and after["mautic"] == {"email_stats": 3, "page_hits": 3,
                                                              "form_submissions": 2}  # the manual residue
    for system in ("freshchat", "matomo"):
        assert after[system] == before[system] != {}, system
    assert jane_in_accounts(world["accounts"]) == user_before  # the account database was not touched

    # Only the scoped systems were asked; the plan and the manifest list the others as out of scope.
    with rt.sessions() as s:
        asked = set(s.scalars(sa.select(SystemHit.system).where(SystemHit.request_id == req.id)))
    assert asked == {"mautic", "salesmanago"}
    skipped = {step["system"]: step["reason"] for step in req.plan or [] if step["action"] == "skip"}
    assert skipped == dict.fromkeys(("accounts", "freshchat", "matomo"), "outside this request's scope")

    pipeline.confirm_manual(rt, wake, req.id, "mautic", "Removed the NULL-lead rows in the Mautic DB", actor="dpo")
    wake.drain()
    done = load(rt, req.id)
    assert done.status == "completed"
    with zipfile.ZipFile(local_path(done.bundle_path or "")) as zf:
        manifest = orjson.loads(zf.read("manifest.json"))
    for system in ("accounts", "freshchat", "matomo"):
        entry = manifest["systems"][system]
        assert entry["status"] == "skipped" and "outside this request's scope" in entry["reasons"], system


def test_scoped_and_full_requests_are_separate_and_a_repeat_of_the_same_scope_joins(world: dict[str, Any]) -> None:
    rt, wake = world["rt"], world["wake"]
    first = pipeline.submit(rt, wake, "access", JANE.email, actor="test", systems=["matomo", "mautic"])
    same = pipeline.submit(rt, wake, "access", JANE.email, actor="test", systems=["mautic", "matomo", "mautic"])
    full = pipeline.submit(rt, wake, "access", JANE.email, actor="test")
    assert first.created and not same.created and same.request.id == first.request.id
    assert full.created and full.request.id != first.request.id and full.request.systems is None


@pytest.mark.parametrize(("systems", "message"), [
    (["mautic", "crm", "ledgerx"], "unknown or disabled system(s): crm, ledgerx"),
    ([], "must name at least one system"),
    ([" "], "must name at least one system"),
])
def test_unknown_systems_are_refused_naming_them_and_nothing_is_written(world: dict[str, Any], systems: list[str],
                                                                      message: str) -> None:
    rt, wake = world["rt"], world["wake"]
    with pytest.raises(pipeline.InvalidInput, match=message.replace("(", r"\(").replace(")", r"\)")):
        pipeline.submit(rt, wake, "erasure", JANE.email, actor="test", systems=systems)
    with rt.sessions() as s:
        assert s.scalar(sa.select(sa.func.count()).select_from(Request)) == 0
    assert not wake.queue


def test_a_hold_end_erasure_acts_only_where_the_records_were_held(world: dict[str, Any]) -> None:
    rt, wake, sandbox, clock = world["rt"], world["wake"], world["sandbox"], world["clock"]
    # A full erasure: accounts keeps Jane's orders under the bookkeeping hold, the vendors erase her.
    req = pipeline.submit(rt, wake, "erasure", JANE.email, actor="test").request
    wake.drain()
    for system in ("mautic", "freshchat"):
        pipeline.confirm_manual(rt, wake, req.id, system, "Did the manual cleanup step", actor="dpo")
    wake.drain()
    assert load(rt, req.id).status == "completed"
    with rt.sessions() as s:
        hold_ends = list(s.scalars(sa.select(ScheduledAction).where(ScheduledAction.kind == scheduler.KIND_HOLD_END)
                                   .order_by(ScheduledAction.due_at)))
    assert hold_ends and all(a.details["systems"] == ["accounts"] for a in hold_ends)
    hold_end = hold_ends[0]  # two orders, two end dates: the first one is enough to show it

    # She signs up for the newsletter again before the hold ends; the hold's end must not erase that.
    mautic = sandbox.sims["mautic"]
    new_contact = mautic.add_contact(JANE.email, "Jane", "Doe")  # type: ignore[attr-defined]
    clock.now = hold_end.due_at
    result = scheduler.run_due(rt, wake, "test-scheduler", 10)
    assert result.requests == 1
    wake.drain()
    [request_id] = result.request_ids
    ended = load(rt, request_id)
    assert ended.systems == ["accounts"]
    assert {t.system for t in ended.tasks} == {"accounts"}
    assert all(t.status == "done" for t in ended.tasks)
    assert mautic.contact_ids(JANE.email) == [new_contact]  # type: ignore[attr-defined]
    assert ended.tasks[0].result["changed"]  # the held orders went


def test_the_api_takes_an_optional_systems_field(world: dict[str, Any]) -> None:
    rt, wake = world["rt"], world["wake"]
    token = create_token(rt, "helpdesk", ["submit"], actor="test")[1]
    client = TestClient(create_app(rt, wake))
    headers = {"Authorization": f"Bearer {token}"}

    ok = client.post("/v1/requests", headers=headers,
                     json={"type": "erasure", "email": JANE.email, "systems": ["mautic"]})
    assert ok.status_code == 202, ok.text
    assert load(rt, ok.json()["id"]).systems == ["mautic"]
    unknown = client.post("/v1/requests", headers=headers,
                          json={"type": "erasure", "email": JANE.email, "systems": ["mautic", "crm"]})
    assert unknown.status_code == 422 and unknown.json()["error"]["code"] == "invalid_input"
    assert "crm" in unknown.json()["error"]["message"]
    empty = client.post("/v1/requests", headers=headers, json={"type": "erasure", "email": JANE.email, "systems": []})
    assert empty.status_code == 422 and empty.json()["error"]["code"] == "validation_error"
