"""An erasure that would change records naming someone else is refused unless an operator confirms.

Real sockets: the account database (SQLite) and the four vendor simulators, with a FreshChat
conversation Jane shares with John; driven in-process through the pipeline and the HTTP API.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from discovery.engine import pipeline
from discovery.engine.ledger import Request, RequestStatus, SubjectIdentity, TaskStatus
from discovery.intake.api_tokens import create_token
from sandbox.launch import Sandbox
from sandbox.people import JANE, JOHN
from tests.helpers import sandbox_world
from workers.api import create_app

pytestmark = pytest.mark.integration


@pytest.fixture
def world(tmp_path: Path) -> Iterator[dict[str, Any]]:
    # A conversation Jane shares with John in FreshChat: erasing it would erase John's messages too.
    def share(sandbox: Sandbox) -> None:
        sandbox.sims["freshchat"].seed_shared()  # type: ignore[attr-defined]

    with sandbox_world(tmp_path, seed=share) as world:
        yield world


def test_the_dry_run_refuses_the_system_and_names_no_one(world: dict[str, Any]) -> None:
    rt = world["rt"]
    found, steps = pipeline.dry_run(rt, "erasure", JANE.email)
    report = pipeline.plan_report(found, steps)
    assert [r["system"] for r in report["refused"]] == ["freshchat"]
    # The dry run counts, per system and table, the records and the distinct identifiers a change would touch.
    assert report["reach"]["freshchat"]["conversations"]["not_the_subjects"] >= 1
    assert all(n["not_the_subjects"] == 0 for n in report["reach"]["accounts"].values())
    users = report["reach"]["accounts"]["users"]
    assert users["records"] == 1 and users["identifiers"] > 0 and users["not_the_subjects"] == 0
    assert users["left_alone"] == 0 and set(users) == {"records", "identifiers", "not_the_subjects", "left_alone"}
    assert "not this person's" in report["refused"][0]["reason"]
    assert JOHN.email not in repr(report) and JOHN.first_name not in repr(report)
    # Every other system is planned as usual, and an access request refuses nothing.
    assert {s["system"] for s in report["steps"] if s["task"] == "erase"} >= {"accounts", "mautic"}
    assert pipeline.plan_report(*pipeline.dry_run(rt, "access", JANE.email))["refused"] == []
    # Every learned identifier says where it came from.
    learned = [i for i in report["identifiers"] if i["source"] != "request"]
    assert learned and all(i["via"] and i["via"].startswith(f"{i['source']}: ") for i in learned)

    confirmed = pipeline.plan_report(*pipeline.dry_run(rt, "erasure", JANE.email, confirm_others="checked: ok"))
    assert confirmed["refused"] == []
    assert any(s["system"] == "freshchat" and s["task"] == "erase" for s in confirmed["steps"])


def test_a_submitted_erasure_fails_the_refused_system_and_leaves_the_other_person_alone(
        world: dict[str, Any]) -> None:
    rt, wake, sandbox = world["rt"], world["wake"], world["sandbox"]
    chat = sandbox.sims["freshchat"]
    john_before = chat.holdings(JOHN.email)  # type: ignore[attr-defined]

    req_id = pipeline.submit(rt, wake, "erasure", JANE.email, actor="test").request.id
    wake.drain()
    with rt.sessions() as s:
        req = s.get(Request, req_id)
        assert req is not None
        tasks = {t.system: t for t in req.tasks}
        assert req.status in (RequestStatus.COMPLETED_WITH_ERRORS, RequestStatus.AWAITING_MANUAL)
        refused = tasks["freshchat"]
        assert refused.status == TaskStatus.FAILED and "not this person's" in (refused.error or "")
        assert tasks["accounts"].status == TaskStatus.DONE
        learned = [(i.source, i.via) for i in s.query(SubjectIdentity).filter_by(request_id=req_id)
                   if i.source != "request"]
    assert learned and all(via and via.startswith(f"{source}: ") for source, via in learned)
    assert chat.holdings(JOHN.email) == john_before  # type: ignore[attr-defined]


def test_the_api_answers_409_until_an_operator_gives_a_reason(world: dict[str, Any]) -> None:
    rt, wake = world["rt"], world["wake"]
    token = create_token(rt, "dpo", ["submit", "read"], actor="test")[1]
    client = TestClient(create_app(rt, wake))
    headers = {"Authorization": f"Bearer {token}"}

    refused = client.post("/v1/plans", json={"type": "erasure", "email": JANE.email}, headers=headers)
    assert refused.status_code == 409
    error = refused.json()["error"]
    assert error["code"] == "refused" and [d["system"] for d in error["details"]] == ["freshchat"]
    assert JOHN.email not in refused.text

    short = client.post("/v1/plans", json={"type": "erasure", "email": JANE.email, "confirm_others": "x"},
                        headers=headers)
    assert short.status_code == 422

    ok = client.post("/v1/plans", json={"type": "erasure", "email": JANE.email,
                                        "confirm_others": "John agreed to the conversation's deletion"},
                     headers=headers)
    assert ok.status_code == 200 and ok.json()["refused"] == []

    made = client.post("/v1/requests", json={"type": "erasure", "email": JANE.email,
                                             "confirm_others": "John agreed to the conversation's deletion"},
                       headers=headers)
    assert made.status_code == 202
    wake.drain()
    view = client.get(f"/v1/requests/{made.json()['id']}", headers=headers).json()
    assert next(t for t in view["tasks"] if t["system"] == "freshchat")["status"] != "failed"
    assert {i["source"] for i in view["identifiers"]} >= {"request", "accounts"}
    assert all(i["via"] for i in view["identifiers"] if i["source"] != "request")
