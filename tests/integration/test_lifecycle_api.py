"""The lifecycle over HTTP (issue 12): GET /v1/requests with filters and pages, deny, cancel, retry and the audit
trail; 409 for a wrong state, 403 without the scope, the subject masked unless the token has `subject`. In-process
app on a PostgreSQL ledger; wake-ups are run by the test (SyncWakeups)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from connectors.base import Identities, PermanentError
from discovery.engine import db, lifecycle, pipeline
from discovery.engine.runtime import Runtime
from discovery.engine.settings import load_settings
from discovery.intake.api_tokens import create_token
from sandbox.people import JANE, JOHN, OLA
from tests.conftest import SECRET, seed_accounts, write_config
from tests.helpers import SyncWakeups
from workers.api import create_app

pytestmark = pytest.mark.integration

UNKNOWN = "00000000-0000-0000-0000-000000000000"


@pytest.fixture
def env(tmp_path: Path, pg_database: Callable[[], str]) -> Iterator[dict[str, Any]]:
    ledger, accounts = pg_database(), pg_database()
    engine = seed_accounts(accounts)
    config = write_config(tmp_path, ledger)
    environ = {"DSAR_SECRET_KEY": SECRET, "DSAR_ACCOUNTS_DB_URL": accounts}
    rt = Runtime(load_settings(config, environ), env=environ)
    db.upgrade(rt.engine)
    wake = SyncWakeups(rt)
    tokens = {name: create_token(rt, name, scopes, actor="test")[1] for name, scopes in {
        "reader": ["read"], "dpo": ["act"], "viewer": ["read", "subject"], "submitter": ["submit"],
        "boss": ["admin"]}.items()}
    client = TestClient(create_app(rt, wake))
    yield {"rt": rt, "wake": wake, "client": client, "tokens": tokens}
    client.close()
    rt.close()
    engine.dispose()


def call(env: dict[str, Any], method: str, path: str, token: str = "dpo", **kwargs: Any) -> Any:
    return env["client"].request(method, path, headers={"Authorization": f"Bearer {env['tokens'][token]}"}, **kwargs)


def error(resp: Any, status: int, code: str) -> str:
    assert resp.status_code == status, (resp.status_code, resp.text)
    body = resp.json()
    assert body["error"]["code"] == code, body
    return str(body["error"]["message"])


def submit(env: dict[str, Any], kind: str, email: str, ticket: str, drain: bool = False) -> str:
    request_id = pipeline.submit(env["rt"], env["wake"], kind, email, ticket=ticket, actor="test").request.id
    if drain:
        env["wake"].drain()
    else:
        env["wake"].queue.clear()
    return request_id


def test_list_filters_pages_and_masks_the_subject(env: dict[str, Any]) -> None:
    done = submit(env, "access", JANE.email, "T-1", drain=True)
    held = submit(env, "erasure", JOHN.email, "T-2")
    other = submit(env, "access", OLA.email, "T-3")
    listed = call(env, "GET", "/v1/requests", token="reader").json()
    assert listed["total"] == 3 and listed["count"] == 3 and listed["page"] == 1
    assert {r["id"] for r in listed["requests"]} == {done, held, other}
    jane = next(r for r in listed["requests"] if r["id"] == done)
    assert jane["subject"] == "j***@e***.com" and jane.get("subject_email") is None
    assert JANE.email not in str(listed)
    full = call(env, "GET", "/v1/requests", token="viewer").json()
    assert {r["subject_email"] for r in full["requests"]} == {JANE.email, JOHN.email, OLA.email}
    assert call(env, "GET", "/v1/requests", token="boss").json()["requests"][0]["subject_email"]

    # The request itself, as the list: masked for a reader, in full with the subject scope (or admin).
    detail = call(env, "GET", f"/v1/requests/{done}", token="reader").json()
    assert detail["subject"] == "j***@e***.com" and detail["subject_email"] is None
    assert detail["identifiers"] and JANE.email not in str(detail)
    learned = call(env, "GET", f"/v1/requests/{done}", token="viewer").json()["identifiers"]
    assert [i["value"] for i in detail["identifiers"]] == [lifecycle.mask_value(i["value"]) for i in learned]
    assert any(i["value"] == JANE.email for i in learned) and len(learned) > 1  # the account id learned too
    for token in ("viewer", "boss"):
        assert call(env, "GET", f"/v1/requests/{done}", token=token).json()["subject_email"] == JANE.email

    def ids(**params: Any) -> list[str]:
        return [r["id"] for r in call(env, "GET", "/v1/requests", token="reader", params=params).json()["requests"]]

    assert ids(status="completed") == [done]
    assert set(ids(status="open")) == {held, other}
    assert ids(type="erasure") == [held]
    assert ids(ticket="T-3") == [other]
    assert ids(overdue="true") == []
    first = call(env, "GET", "/v1/requests", token="reader", params={"per_page": 2}).json()
    second = call(env, "GET", "/v1/requests", token="reader", params={"per_page": 2, "page": 2}).json()
    assert first["total"] == second["total"] == 3 and first["count"] == 2 and second["count"] == 1
    assert {r["id"] for r in first["requests"] + second["requests"]} == {done, held, other}
    legacy = call(env, "GET", "/v1/requests", token="reader", params={"limit": 1, "offset": 2}).json()
    assert legacy["count"] == 1 and legacy["offset"] == 2 and legacy["limit"] == 1
    for bad in ({"page": 0}, {"per_page": 0}, {"per_page": 10_000}, {"type": "forget"}, {"status": "lost"}):
        error(call(env, "GET", "/v1/requests", token="reader", params=bad), 422, "validation_error")
    error(call(env, "GET", "/v1/requests", token="submitter"), 403, "forbidden")


def test_deny_cancel_and_their_conflicts(env: dict[str, Any]) -> None:
    denied, cancelled = submit(env, "access", JANE.email, "T-1"), submit(env, "erasure", JOHN.email, "T-2")
    body = {"basis": "unfounded_or_excessive", "reason": "the fifth identical request this month"}
    error(call(env, "POST", f"/v1/requests/{denied}/deny", token="reader", json=body), 403, "forbidden")
    error(call(env, "POST", f"/v1/requests/{UNKNOWN}/deny", json=body), 404, "not_found")
    error(call(env, "POST", f"/v1/requests/{denied}/deny", json={**body, "basis": "because"}), 422,
          "validation_error")
    error(call(env, "POST", f"/v1/requests/{denied}/deny", json={**body, "reason": "x"}), 422, "validation_error")
    ok = call(env, "POST", f"/v1/requests/{denied}/deny", json=body)
    assert ok.status_code == 200, ok.text
    assert ok.json()["status"] == "denied" and ok.json()["basis"] == "unfounded_or_excessive"
    got = call(env, "POST", f"/v1/requests/{cancelled}/cancel", json={"reason": "withdrawn by e-mail"})
    assert got.status_code == 200 and got.json()["status"] == "cancelled" and got.json()["basis"] is None
    assert "is cancelled" in error(call(env, "POST", f"/v1/requests/{cancelled}/deny", json=body), 409,
                                   "state_conflict")
    error(call(env, "POST", f"/v1/requests/{denied}/cancel", json={"reason": "withdrawn"}), 409, "state_conflict")
    error(call(env, "POST", f"/v1/requests/{denied}/retry"), 409, "state_conflict")
    trail = call(env, "GET", f"/v1/requests/{denied}/audit", token="reader").json()
    assert trail["events"][-1]["event"] == "request.denied" and trail["events"][-1]["actor"] == "api:dpo"
    assert trail["events"][-1]["note"] == body["reason"] and trail["next_actions"] == []
    error(call(env, "GET", f"/v1/requests/{UNKNOWN}/audit", token="reader"), 404, "not_found")
    error(call(env, "GET", f"/v1/requests/{denied}/audit", token="submitter"), 403, "forbidden")


def test_retry_over_http(env: dict[str, Any]) -> None:
    rt = env["rt"]
    conn = rt.connector("accounts")
    real = conn.export

    def broken(identities: Identities, entities: list[Any]) -> Any:
        raise PermanentError("accounts", "SELECT refused: permission denied")

    conn.export = broken  # type: ignore[method-assign]
    request_id = submit(env, "access", JANE.email, "T-1", drain=True)
    conn.export = real  # type: ignore[method-assign]
    trail = call(env, "GET", f"/v1/requests/{request_id}/audit", token="reader").json()
    assert f"dsar retry {request_id} --system accounts" in trail["next_actions"]
    error(call(env, "POST", f"/v1/requests/{request_id}/retry", token="reader"), 403, "forbidden")
    error(call(env, "POST", f"/v1/requests/{request_id}/retry", json={"systems": ["billing"]}), 422, "invalid_input")
    error(call(env, "POST", f"/v1/requests/{UNKNOWN}/retry"), 404, "not_found")
    got = call(env, "POST", f"/v1/requests/{request_id}/retry", json={"systems": ["accounts"]})
    assert got.status_code == 200, got.text
    assert got.json()["status"] == "running"
    assert got.json()["tasks"] == [{"system": "accounts", "action": "export", "why": "failed"}]
    env["wake"].drain()
    view = call(env, "GET", f"/v1/requests/{request_id}", token="reader").json()
    assert view["status"] == "completed" and view["bundle_ready"]
    assert "nothing failed" in error(call(env, "POST", f"/v1/requests/{request_id}/retry"), 409, "state_conflict")
    events = [(e["event"], e["actor"]) for e in call(env, "GET", f"/v1/requests/{request_id}/audit",
                                                      token="reader").json()["events"]]
    assert ("request.retried", "api:dpo") in events
