"""One request per ticket, whatever its type (issue 11.5), on a PostgreSQL ledger: the API and the signed ticket
webhook answer a second type on the same ticket with 409 naming the first request; the same type still answers with
the first request; concurrent intake of two types on one ticket makes exactly one request."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from discovery.engine import db, pipeline
from discovery.engine.ledger import Request
from discovery.engine.runtime import Runtime
from discovery.engine.settings import load_settings
from discovery.intake import tickets
from discovery.intake.api_tokens import create_token
from tests.conftest import SECRET, write_config
from workers.api import create_app

pytestmark = pytest.mark.integration

TICKET_SECRET = "ticket-secret-0123456789"


class Nowhere:
    def discover(self, request_id: str) -> None: ...
    def execute(self, task_id: int) -> None: ...
    def merge(self, request_id: str) -> None: ...


@pytest.fixture
def rt(tmp_path: Path, pg_database: Callable[[], str]) -> Iterator[Runtime]:
    config = write_config(tmp_path, pg_database())
    env = {"DSAR_SECRET_KEY": SECRET, "DSAR_ACCOUNTS_DB_URL": f"sqlite:///{tmp_path / 'accounts.db'}",
           "DSAR_TICKET_WEBHOOK_SECRET": TICKET_SECRET}
    runtime = Runtime(load_settings(config, env), env=env)
    db.upgrade(runtime.engine)
    yield runtime
    runtime.close()


def requests_on(rt: Runtime, ticket: str) -> list[tuple[str, str, str]]:
    with rt.sessions() as s:
        return [tuple(r) for r in s.execute(sa.select(Request.id, Request.type, Request.source)
                                            .where(Request.ticket_ref == ticket).order_by(Request.received_at))]


def test_the_api_refuses_a_second_type_on_a_ticket_naming_the_first(rt: Runtime) -> None:
    client = TestClient(create_app(rt, Nowhere()))
    auth = {"Authorization": f"Bearer {create_token(rt, 'submitter', ['submit'], actor='test')[1]}"}
    first = client.post("/v1/requests", headers=auth, json={"type": "access", "email": "p@example.no",
                                                            "ticket": "HD-1"})
    assert first.status_code == 202, first.text
    first_id = first.json()["id"]
    again = client.post("/v1/requests", headers=auth, json={"type": "access", "email": "p@example.no",
                                                            "ticket": "HD-1"})
    assert again.status_code == 200 and again.json()["id"] == first_id
    other = client.post("/v1/requests", headers=auth, json={"type": "erasure", "email": "p@example.no",
                                                            "ticket": "HD-1"})
    assert other.status_code == 409, other.text
    error = other.json()["error"]
    assert error["code"] == "ticket_conflict" and first_id in error["message"]
    assert error["details"] == [{"request_id": first_id, "type": "access"}]
    assert requests_on(rt, "HD-1") == [(first_id, "access", "api")]


def test_the_ticket_webhook_refuses_a_second_type_on_a_ticket_naming_the_first(rt: Runtime) -> None:
    client = TestClient(create_app(rt, Nowhere()))

    def deliver(payload: dict[str, Any]) -> Any:
        body = orjson.dumps(payload)
        return client.post("/v1/tickets", content=body, headers={
            "Content-Type": "application/json",
            tickets.SIGNATURE_HEADER: tickets.sign(TICKET_SECRET.encode(), body, datetime.now(UTC))})

    ticket = {"ticket_id": "4711", "requester_email": "p@example.no"}
    first = deliver({**ticket, "type": "access"})
    assert first.status_code == 202, first.text
    first_id = first.json()["id"]
    assert deliver({**ticket, "type": "access"}).json()["id"] == first_id  # a redelivery: the first request
    other = deliver({**ticket, "type": "Erasure"})
    assert other.status_code == 409 and other.json()["error"]["code"] == "ticket_conflict"
    assert first_id in other.json()["error"]["message"]
    assert requests_on(rt, "4711") == [(first_id, "access", "ticket")]


def test_two_types_on_one_ticket_at_the_same_instant_make_one_request(rt: Runtime) -> None:
    barrier = threading.Barrier(2)
    outcomes: list[Any] = []

    def submit(rtype: str) -> None:
        barrier.wait()
        try:
            outcomes.append(pipeline.submit(rt, Nowhere(), rtype, "q@example.no", "HD-2", source="api").request.id)
        except pipeline.TicketConflict as exc:
            outcomes.append(exc)

    threads = [threading.Thread(target=submit, args=(t,)) for t in ("access", "erasure")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    made = requests_on(rt, "HD-2")
    assert len(made) == 1
    (conflict,) = [o for o in outcomes if isinstance(o, pipeline.TicketConflict)]
    assert conflict.request_id == made[0][0]
