"""The pools of the ledger and of the SQL connectors: disconnect handling paid only where it can help, connections
reused in the order they came back, and the same pool in autocommit for single statements.

SQLAlchemy's `pool_pre_ping` pings on every checkout: a round trip and ~0.35 ms of CPU, six or seven times per
request on the ledger and twice more (locate, export) on each SQL system. Here a connection handed back less than
PING_AFTER_IDLE_SECONDS ago is handed out as is; one idle longer (a database restart or an idle timeout may have
closed it meanwhile) is pinged first, and a dead one replaced: the pool retries the checkout on a fresh connection,
as with pre_ping. A connection that died while in use fails its statement, which the pipeline treats as the database
being briefly away (a ledger write is retried; a connector's OperationalError is a transient error, retried).

The pools hand out the connection given back last (LIFO): sequential work keeps reusing one warm connection. In
SQLAlchemy's default FIFO order it cycled through every pooled connection, and after a pause each one was pinged on
its first use: with 20 pooled, twenty extra round trips spread over the first requests after a quiet spell.
"""

from __future__ import annotations

import time
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import DisconnectionError

PING_AFTER_IDLE_SECONDS = 5.0


def pooled_engine(url: str, **options: Any) -> sa.Engine:
    """`sa.create_engine(url, **options)` with this module's pool: LIFO (SQLite's in-memory pool takes no such option)
    and pinged only when idle. Raises what create_engine raises for a bad URL."""
    if sa.engine.make_url(url).get_backend_name() != "sqlite":
        options.setdefault("pool_use_lifo", True)
    engine = sa.create_engine(url, **options)
    ping_when_idle(engine)  # not pool_pre_ping: a round trip per checkout
    return engine


def ping_when_idle(engine: sa.Engine, after: float | None = None) -> None:
    """Ping a connection at checkout only when it sat in the pool longer than `after` seconds (default:
    PING_AFTER_IDLE_SECONDS, read at each checkout)."""

    @sa.event.listens_for(engine, "connect")
    def _fresh(_dbapi_conn: Any, record: Any) -> None:
        record.info["dsar_returned_at"] = time.monotonic()

    @sa.event.listens_for(engine, "checkin")
    def _returned(_dbapi_conn: Any, record: Any) -> None:
        if record is not None:
            record.info["dsar_returned_at"] = time.monotonic()

    @sa.event.listens_for(engine, "checkout")
    def _checkout(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        idle = PING_AFTER_IDLE_SECONDS if after is None else after
        if time.monotonic() - record.info.get("dsar_returned_at", 0.0) < idle:
            return
        try:
            engine.dialect.do_ping(dbapi_conn)
        except Exception as exc:  # the pool discards this connection and checks out another
            raise DisconnectionError(f"database connection found closed ({type(exc).__name__})") from None


def autocommit_engine(engine: sa.Engine) -> sa.Engine | None:
    """PostgreSQL: `engine`'s pool with its connections in autocommit, for single statements and readers, which a
    transaction would only wrap in a BEGIN and a COMMIT (or ROLLBACK) round trip each (psycopg does not send them with
    the statements). psycopg's autocommit is a flag on the connection, set without a statement; other drivers send
    SET autocommit, so they get None (use `engine`)."""
    return engine.execution_options(isolation_level="AUTOCOMMIT") if engine.dialect.name == "postgresql" else None
