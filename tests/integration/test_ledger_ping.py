"""The pools of the ledger and the SQL connectors ping a connection only when it was idle a while
(connectors/sql_pool.py ping_when_idle)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import OperationalError

from connectors import sql_pool
from discovery.engine import db

pytestmark = pytest.mark.integration


def _backend_killed_while_idle(engine: sa.Engine, admin: sa.Engine) -> None:
    """Use the pool's one connection, then have the server close it while it sits in the pool."""
    with engine.connect() as conn:
        pid = conn.execute(sa.text("SELECT pg_backend_pid()")).scalar_one()
    with admin.connect() as conn:  # our own test database's connection, nobody else's
        assert conn.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid}).scalar_one()


def test_a_connection_closed_while_idle_is_replaced(pg_database: Callable[[], str], pg_admin: sa.Engine,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sql_pool, "PING_AFTER_IDLE_SECONDS", 0.0)  # every checkout counts as "idle a while"
    engine = db.make_engine(pg_database())
    try:
        _backend_killed_while_idle(engine, pg_admin)
        with engine.connect() as conn:  # pinged, found closed, replaced: the caller sees nothing
            assert conn.execute(sa.text("SELECT 1")).scalar_one() == 1
    finally:
        engine.dispose()


def test_a_connection_used_a_moment_ago_is_not_pinged(pg_database: Callable[[], str], pg_admin: sa.Engine,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sql_pool, "PING_AFTER_IDLE_SECONDS", 3600.0)
    engine = db.make_engine(pg_database())
    try:
        _backend_killed_while_idle(engine, pg_admin)
        # No ping (it was handed back just now): the statement itself finds the connection gone, as the pipeline's
        # transient-failure handling expects, and the pool drops it for the next checkout.
        with pytest.raises(OperationalError), engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT 1")).scalar_one() == 1
    finally:
        engine.dispose()
