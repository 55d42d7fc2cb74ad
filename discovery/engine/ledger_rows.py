"""The request hot path's ledger statements, in SQLAlchemy Core: rows in, rows out, no ORM unit of work.

Every request passes through discovery, its tasks' outcomes and the merge; there the ORM's identity map, change
tracking and flush cost more CPU than the statements themselves (a flush of one object ~1 ms against ~0.2 ms for
the same INSERT in Core, measured with the side-by-side harness, issue 15). Commands and the console, which run
rarely, keep the ORM models of ledger.py; both write the same tables.
"""

from __future__ import annotations

from typing import Any, TypeAlias

import sqlalchemy as sa

from connectors.base import Identities, Identity, IdentityType, Note, is_note
from discovery.engine.ledger import (
    TERMINAL_TASK,
    AuditEvent,
    Request,
    RequestStatus,
    SubjectIdentity,
    SystemHit,
    Task,
    TaskStatus,
)

REQUESTS: sa.Table = Request.__table__  # type: ignore[assignment]
TASKS: sa.Table = Task.__table__  # type: ignore[assignment]
IDENTITIES: sa.Table = SubjectIdentity.__table__  # type: ignore[assignment]
HITS: sa.Table = SystemHit.__table__  # type: ignore[assignment]
AUDIT: sa.Table = AuditEvent.__table__  # type: ignore[assignment]

AnyRow: TypeAlias = sa.Row[*tuple[Any, ...]]  # a row of any columns, read by attribute


def lock_request(conn: sa.Connection, request_id: str, *columns: str, lock: bool = True) -> AnyRow | None:
    """The request's `columns` (all when none are named), its row locked FOR UPDATE (`lock`) until the commit."""
    cols = [REQUESTS.c[c] for c in columns] if columns else [REQUESTS]
    query = sa.select(*cols).where(REQUESTS.c.id == request_id)
    return conn.execute(query.with_for_update() if lock else query).first()


def update_request(conn: sa.Connection, request_id: str, **values: Any) -> None:
    conn.execute(sa.update(REQUESTS).where(REQUESTS.c.id == request_id).values(**values))


def add_audit(conn: sa.Connection, event: str, actor: str, request_id: str | None, subject_hash: str | None,
              **details: Any) -> None:
    """pipeline.audit's row, written at once (the ORM's version waits for the session's flush)."""
    conn.execute(sa.insert(AUDIT).values(event=event, actor=actor, request_id=request_id, subject_hash=subject_hash,
                                         details=details))


def identities_of(conn: sa.Connection, request_id: str) -> Identities:
    """What the request knows of the person so far, in the order it was learned."""
    rows = conn.execute(sa.select(IDENTITIES.c.type, IDENTITIES.c.value, IDENTITIES.c.source, IDENTITIES.c.via,
                                  IDENTITIES.c.via_note)
                        .where(IDENTITIES.c.request_id == request_id).order_by(IDENTITIES.c.id))
    return Identities(Identity(IdentityType(r.type), r.value, r.source, r.via or "",
                               Note.from_dict(r.via_note) if is_note(r.via_note) else None) for r in rows)


def next_status(conn: sa.Connection, request_id: str, status: str) -> RequestStatus | None:
    """Where a running request goes once a task of it ended: merging when every task is terminal, awaiting_manual
    when the rest wait for a person; None when it stays where it is."""
    if status not in (RequestStatus.RUNNING, RequestStatus.AWAITING_MANUAL):
        return None
    statuses = list(conn.scalars(sa.select(TASKS.c.status).where(TASKS.c.request_id == request_id)))
    if all(st in TERMINAL_TASK for st in statuses):
        return RequestStatus.MERGING
    if status != RequestStatus.AWAITING_MANUAL and \
            all(st in TERMINAL_TASK or st == TaskStatus.AWAITING_MANUAL for st in statuses):
        return RequestStatus.AWAITING_MANUAL
    return None
