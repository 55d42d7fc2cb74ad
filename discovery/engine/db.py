"""Ledger engine, sessions and schema upgrades (Alembic, run in-process)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
_UPGRADE_LOCK = 74_017_001  # PostgreSQL advisory lock id: one process upgrades at a time


class LedgerUnavailable(Exception):
    """The ledger database cannot be reached; the message names no password."""


def make_engine(url: str) -> sa.Engine:
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

        @sa.event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: object, _record: object) -> None:
            cur = dbapi_conn.cursor()  # type: ignore[attr-defined]
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        @sa.event.listens_for(engine, "begin")
        def _immediate(conn: sa.Connection) -> None:
            # Take the write lock at BEGIN so read-then-write transactions serialise instead of deadlocking.
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        sqlite_no_autobegin(engine)
        return engine
    return sa.create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)


def sqlite_no_autobegin(engine: sa.Engine) -> None:
    """Let our 'begin' listener issue BEGIN IMMEDIATE (pysqlite would otherwise begin lazily itself)."""

    @sa.event.listens_for(engine, "connect")
    def _no_autobegin(dbapi_conn: object, _record: object) -> None:
        dbapi_conn.isolation_level = None  # type: ignore[attr-defined]


def session_factory(engine: sa.Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def reachable(engine: sa.Engine) -> Iterator[None]:
    try:
        yield
    except OperationalError as exc:
        raise LedgerUnavailable(f"ledger database unreachable ({engine.url.render_as_string(hide_password=True)})") \
            from exc


def upgrade(engine: sa.Engine) -> None:
    """Bring the ledger schema to the newest revision; safe to call from every process at start."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with reachable(engine), engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _UPGRADE_LOCK})
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")
