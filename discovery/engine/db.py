"""Ledger engine, sessions and schema upgrades (Alembic, run in-process)."""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from connectors.sql_pool import pooled_engine

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
_UPGRADE_LOCK = 74_017_001  # PostgreSQL advisory lock id: one process upgrades at a time
_REVISION = re.compile(r"^revision\s*(?::[^=]*)?=\s*['\"]([^'\"]+)['\"]", re.MULTILINE)
_DOWN_REVISION = re.compile(r"^down_revision\s*(?::[^=]*)?=\s*(None|['\"]([^'\"]+)['\"])\s*$", re.MULTILINE)


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
    # A pool keeps up to pool_size connections; beyond that each one is opened for one checkout and closed after (a
    # PostgreSQL backend started and stopped, a few ms of CPU each). 20 covers the API under a burst of 20 clients
    # (at 10 it opened and closed 10 connections per burst); the most at once stays 30, as before.
    return pooled_engine(url, pool_size=20, max_overflow=10)  # LIFO, pinged when idle (connectors/sql_pool.py)


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
    head = head_revision()
    with reachable(engine), engine.connect() as conn:
        if head is not None and current_revision(conn) == head:
            return  # nothing to do, and Alembic need not be loaded to find that out
    # Alembic (and Mako under it) only when there is something to upgrade: ~10 MB and 400 modules that a long-running
    # process (`dsar serve`, `dsar worker`'s children) would otherwise carry for its whole life after one check.
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with reachable(engine), engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _UPGRADE_LOCK})
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


def current_revision(conn: sa.Connection) -> str | None:
    """The ledger's Alembic revision (its alembic_version row); None for a ledger without one."""
    if not sa.inspect(conn).has_table("alembic_version"):
        return None
    rows = conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalars().all()
    return rows[0] if len(rows) == 1 else None


@functools.cache
def head_revision() -> str | None:
    """The newest revision of migrations/versions, read from the scripts' `revision` and `down_revision` lines (what
    Alembic reads too); None unless the history is one line with one head (Alembic then decides)."""
    revisions: dict[str, str | None] = {}
    for script in (MIGRATIONS / "versions").glob("*.py"):
        text = script.read_text(encoding="utf-8")
        rev, down = _REVISION.search(text), _DOWN_REVISION.search(text)
        if rev is None or down is None:
            return None
        revisions[rev.group(1)] = down.group(2)
    heads = set(revisions) - set(revisions.values())
    return heads.pop() if len(heads) == 1 else None
