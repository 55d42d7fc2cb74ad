"""Fuzzing the API from its own OpenAPI document (schemathesis): whatever arrives, never a 500.

Runs against a real `dsar serve` on PostgreSQL and Redis, with an admin token, and signs the webhook
bodies it generates, so the fuzzer reaches the code behind the authentication as well.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import requests
import schemathesis
import sqlalchemy as sa
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.generation.modes import GenerationMode

from discovery.intake import tickets
from tests.conftest import RedisServer
from tests.integration.test_api import EVENTS_SECRET, FRESHDESK_SECRET, TICKET_SECRET, ApiStack

pytestmark = pytest.mark.integration

EXAMPLES = 60  # per operation and mode
SIGNED = {"/v1/tickets": TICKET_SECRET, "/v1/events/account-deleted": EVENTS_SECRET}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, pg_admin: sa.Engine,
          redis_server: RedisServer) -> Iterator[ApiStack]:
    with ApiStack(tmp_path_factory.mktemp("fuzz"), pg_admin, redis_server, worker=False) as running:
        yield running


@pytest.fixture(scope="module")
def session() -> Iterator[requests.Session]:
    with requests.Session() as s:
        yield s


def send(case: Any, stack: ApiStack, session: requests.Session) -> requests.Response:
    """Send a generated case with an admin token, signing webhook bodies as their senders would."""
    kwargs = case.as_transport_kwargs(base_url=stack.base, headers=stack.auth("admin"))
    prepared = requests.Request(method=kwargs["method"], url=kwargs["url"], headers=kwargs["headers"],
                                params=kwargs.get("params"), cookies=kwargs.get("cookies"),
                                json=kwargs.get("json"), data=kwargs.get("data")).prepare()
    path = case.operation.path
    body = prepared.body if isinstance(prepared.body, bytes) else (prepared.body or "").encode()
    if path in SIGNED:
        prepared.headers[tickets.SIGNATURE_HEADER] = tickets.sign(SIGNED[path].encode(), body, datetime.now(UTC))
    elif path == "/v1/tickets/freshdesk":
        prepared.headers["X-Dsar-Webhook-Secret"] = FRESHDESK_SECRET
    return session.send(prepared, timeout=30, allow_redirects=False)


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_input_makes_the_api_fail(stack: ApiStack, session: requests.Session, mode: GenerationMode) -> None:
    schema = schemathesis.openapi.from_url(f"{stack.base}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 12
    statuses: dict[str, set[int]] = {}
    failures: list[str] = []
    unsatisfiable: list[str] = []
    # Ids are random otherwise (404): half the runs use a request that exists, held for verification.
    held = stack.signed("/v1/tickets", {"ticket_id": f"FZ-{mode}", "requester_email": "asker@example.net",
                                        "subject_email": f"fuzz-{mode}@example.org", "type": "access"}, TICKET_SECRET)
    assert held.status_code == 202, held.text
    runs = [(o, None) for o in operations] + [(o, {"request_id": held.json()["id"]}) for o in operations
                                              if "{request_id}" in o.path]
    for operation, path_parameters in runs:
        label = f"{operation.method.upper()} {operation.path}" + (" (existing id)" if path_parameters else "")

        @given(case=operation.as_strategy(generation_mode=mode, path_parameters=path_parameters))
        @settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck),
                  phases=[Phase.explicit, Phase.generate])
        def fuzz(case: Any) -> None:
            response = send(case, stack, session)
            statuses.setdefault(f"{case.operation.method.upper()} {case.operation.path}", set()).add(
                response.status_code)
            if case.path_parameters and "request_id" in case.path_parameters:
                statuses.setdefault("existing id", set()).add(response.status_code)
            case.validate_response(response, checks=[not_a_server_error])

        try:
            fuzz()
        except Unsatisfiable:  # negative mode: nothing in this operation can be made invalid (GET /healthz)
            unsatisfiable.append(label)
        except Exception as exc:  # keep going: one report naming every operation that failed
            failures.append(f"{label}: {str(exc)[:1500]}")
    assert not failures, "\n\n".join(failures)
    assert unsatisfiable == ([] if mode == GenerationMode.POSITIVE else ["GET /healthz"])
    assert set(statuses) - {"existing id"} == {f"{o.method.upper()} {o.path}" for o in operations} - set(unsatisfiable)
    # The fuzzer got past authentication and validation somewhere, not only to 401/422 answers.
    assert any(code < 300 for code in statuses["existing id"]), statuses
    if mode == GenerationMode.POSITIVE:
        accepted = {label for label, codes in statuses.items() if any(code < 300 for code in codes)}
        assert {"POST /v1/requests", "POST /v1/tickets", "POST /v1/events/account-deleted"} <= accepted, statuses
