"""The API looks a client's token up in the ledger about once a second, not on every call (workers/api/deps.py
Verified): scopes are still checked on every call, an expired token is refused at once, a revoked one within a
second."""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from discovery.intake.api_tokens import create_token, revoke_token
from tests.helpers import sandbox_world, wait_until
from workers.api import create_app, deps

pytestmark = pytest.mark.integration


def test_a_live_token_is_looked_up_once_a_second_and_its_scope_checked_every_time(tmp_path: Path) -> None:
    with sandbox_world(tmp_path) as world:
        rt = world["rt"]
        token = create_token(rt, "desk", ["read"], actor="test")[1]
        client = TestClient(create_app(rt, world["wake"]))
        lookups: list[str] = []
        sa.event.listen(rt.engine, "before_cursor_execute", lambda _c, _cur, sql, *_a: lookups.append(sql)
                        if sql.lstrip().startswith("SELECT") and "FROM api_tokens" in sql else None)
        headers = {"Authorization": f"Bearer {token}"}
        for _ in range(5):
            assert client.get("/v1/requests", headers=headers).status_code == 200
        assert len(lookups) == 1  # the first call; the others within the second were answered from memory
        refused = client.post("/v1/requests", headers=headers, json={"type": "access", "email": "a@example.com"})
        assert refused.status_code == 403 and "lacks the 'submit' scope" in refused.text
        assert len(lookups) == 1
        revoke_token(rt, "desk", actor="test")
        # revoked: refused as soon as the second is over (never later), then on every call
        wait_until(lambda: client.get("/v1/requests", headers=headers).status_code == 401,
                   deps.VERIFIED_SECONDS + 2, "the revoked token refused")
        answer = client.get("/v1/requests", headers=headers)
        assert answer.status_code == 401 and "revoked" in answer.text


def test_an_expired_token_is_refused_at_once_though_it_was_live_a_moment_ago(tmp_path: Path) -> None:
    with sandbox_world(tmp_path) as world:
        rt = world["rt"]
        token = create_token(rt, "brief", ["read"], actor="test", expires_in=timedelta(seconds=0.5))[1]
        client = TestClient(create_app(rt, world["wake"]))
        headers = {"Authorization": f"Bearer {token}"}
        started = time.monotonic()
        assert client.get("/v1/requests", headers=headers).status_code == 200
        time.sleep(max(0.0, 0.6 - (time.monotonic() - started)))
        assert time.monotonic() - started < deps.VERIFIED_SECONDS  # still kept: the expiry decides
        answer = client.get("/v1/requests", headers=headers)
        assert answer.status_code == 401 and "expired" in answer.text
