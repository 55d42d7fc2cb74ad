"""The request hot path's ledger statements, in SQLAlchemy Core: rows in, rows out, no ORM unit of work.

Every request passes through discovery, its tasks' outcomes and the merge; there the ORM's identity map, change
tracking and flush cost more CPU than the statements themselves (a flush of one object ~1 ms against ~0.2 ms for
the same INSERT in Core, measured with the side-by-side harness, issue 15). Commands and the console, which run
rarely, keep the ORM models of ledger.py; both write the same tables.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple, TypeAlias

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import aggregate_order_by

from connectors.base import Identities, Identity, IdentityType, Note, is_note
from connectors.sql_driver import execute, scalars
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

# A request in one of these moves on when a task of it ends (status_after).
ADVANCING = (RequestStatus.RUNNING, RequestStatus.AWAITING_MANUAL)


# Built once: a statement object memoises its cache key, so executing it again skips building the expression and
# looking it up in the compiled cache, which cost more CPU than the round trip on small statements.
_ID: sa.BindParameter[Any] = sa.bindparam("request_id_")
_UPDATE_REQUEST = sa.update(REQUESTS).where(REQUESTS.c.id == _ID)
_INSERT_AUDIT = sa.insert(AUDIT)
_TASK_STATUSES = sa.select(TASKS.c.status).where(TASKS.c.request_id == _ID)
# A request's identifiers in the order they were learned (what discovery starts from, what the bundle lists), where
# discovery looked, and its tasks: what the merge reads.
IDENTITIES_OF = sa.select(IDENTITIES.c.type, IDENTITIES.c.value, IDENTITIES.c.source, IDENTITIES.c.via,
                          IDENTITIES.c.via_note, IDENTITIES.c.round) \
    .where(IDENTITIES.c.request_id == _ID).order_by(IDENTITIES.c.id)
MERGE_HITS = sa.select(HITS.c.system, HITS.c.found, HITS.c.error).where(HITS.c.request_id == _ID)
MERGE_TASKS = sa.select(TASKS.c.system, TASKS.c.action, TASKS.c.status, TASKS.c.result, TASKS.c.error,
                        TASKS.c.finished_at).where(TASKS.c.request_id == _ID).order_by(TASKS.c.id)
# New rows, from parameter dicts (one dict or a list of them: a multi-row INSERT); tasks return their ids in order.
INSERT_REQUEST = sa.insert(REQUESTS)
INSERT_IDENTITIES = sa.insert(IDENTITIES)
INSERT_HITS = sa.insert(HITS)
INSERT_TASKS = sa.insert(TASKS).returning(TASKS.c.id, sort_by_parameter_order=True)
# A task's outcome (the SET clause is the keys given), returning what the hooks are told of it.
FINISH_TASK = sa.update(TASKS).where(TASKS.c.id == sa.bindparam("task_id_")) \
    .returning(TASKS.c.system, TASKS.c.action, TASKS.c.result)


@functools.cache
def _select_request(columns: tuple[str, ...], lock: bool) -> sa.Select[Any]:
    query = sa.select(*([REQUESTS.c[c] for c in columns] if columns else [REQUESTS])).where(REQUESTS.c.id == _ID)
    return query.with_for_update() if lock else query


def lock_request(conn: sa.Connection, request_id: str, *columns: str, lock: bool = True) -> AnyRow | None:
    """The request's `columns` (all when none are named), its row locked FOR UPDATE (`lock`) until the commit."""
    return execute(conn, _select_request(columns, lock), {"request_id_": request_id}).first()


def update_request(conn: sa.Connection, request_id: str, **values: Any) -> None:
    """Set `values` (column: value) on the request's row; the SET clause is the keys given."""
    execute(conn, _UPDATE_REQUEST, {"request_id_": request_id, **values})


@functools.cache
def _move_request(owned: bool, returning: tuple[str, ...]) -> sa.Update:
    where = [REQUESTS.c.id == _ID, REQUESTS.c.status == sa.bindparam("from_status_")]
    if owned:
        where.append(REQUESTS.c.lease_owner == sa.bindparam("lease_owner_"))
    return sa.update(REQUESTS).where(*where).returning(*(REQUESTS.c[c] for c in returning))


def move_request(conn: sa.Connection, request_id: str, from_status: str, owner: str | None,
                 returning: tuple[str, ...], **values: Any) -> AnyRow | None:
    """Set `values` on the request only while it is in `from_status` (and, with `owner`, its phase's lease is that
    owner's): one statement for a check and its change, returning the `returning` columns of the row it changed,
    None when the request had moved on (or another process holds the phase). Under READ COMMITTED a concurrent
    change to the row is waited for and the condition checked again on the row as it then is."""
    params = {"request_id_": request_id, "from_status_": from_status, **values}
    if owner is not None:
        params["lease_owner_"] = owner
    return execute(conn, _move_request(owner is not None, returning), params).first()


def add_audit(conn: sa.Connection, event: str, actor: str, request_id: str | None, subject_hash: str | None,
              **details: Any) -> None:
    """pipeline.audit's row, written at once (the ORM's version waits for the session's flush)."""
    execute(conn, _INSERT_AUDIT, {"event": event, "actor": actor, "request_id": request_id,
                                  "subject_hash": subject_hash, "details": details})


def audit_details(conn: sa.Connection, request_id: str, event: str, since_retry: bool = True) -> list[dict[str, Any]]:
    """The details of this request's `event` audit rows, oldest first, rows this transaction wrote included; with
    `since_retry`, only those since an operator last retried it (`request.retried` starts such counts afresh). Off
    the hot path: read when a phase is taken over."""
    where = [AUDIT.c.request_id == request_id, AUDIT.c.event == event]
    if since_retry:
        where.append(AUDIT.c.id > sa.select(sa.func.coalesce(sa.func.max(AUDIT.c.id), 0)).where(
            AUDIT.c.request_id == request_id, AUDIT.c.event == "request.retried").scalar_subquery())
    return [dict(d or {}) for d in conn.scalars(sa.select(AUDIT.c.details).where(*where).order_by(AUDIT.c.id))]


class Identifier(NamedTuple):
    """A stored identifier's row (IDENTITIES_OF's columns)."""

    type: str
    value: str
    source: str
    via: str | None
    via_note: Any
    round: int


def identities_of(conn: sa.Connection, request_id: str) -> Identities:
    """What the request knows of the person so far, in the order it was learned."""
    return as_identities(execute(conn, IDENTITIES_OF, {"request_id_": request_id}))


def as_identities(rows: Any) -> Identities:
    """Identifier rows (IDENTITIES_OF's columns) as the connectors take them."""
    return Identities(Identity(IdentityType(r.type), r.value, r.source, r.via or "",
                               Note.from_dict(r.via_note) if is_note(r.via_note) else None) for r in rows)


# PostgreSQL: a request's identifiers as one JSON array (IDENTITIES_OF's columns and order), read with its claim.
_SEED = sa.select(sa.func.json_agg(aggregate_order_by(sa.func.json_build_array(
    IDENTITIES.c.type, IDENTITIES.c.value, IDENTITIES.c.source, IDENTITIES.c.via, IDENTITIES.c.via_note,
    IDENTITIES.c.round), IDENTITIES.c.id))).where(IDENTITIES.c.request_id == REQUESTS.c.id).scalar_subquery()


@functools.cache
def _claim_with_seed(returning: tuple[str, ...]) -> sa.Update:
    return _move_request(False, ()).returning(*(REQUESTS.c[c] for c in returning), _SEED.label("seed_"))


def claim_with_seed(conn: sa.Connection, request_id: str, from_status: str, returning: tuple[str, ...],
                    **values: Any) -> tuple[AnyRow, list[Identifier]] | None:
    """PostgreSQL: `move_request` (no owner) that also returns the request's identifiers, in one statement: on an
    autocommit connection a claim and the read that follows it cost one round trip instead of four (BEGIN, the
    UPDATE, the SELECT, COMMIT). None when the request is not in `from_status`."""
    row = execute(conn, _claim_with_seed(returning), {"request_id_": request_id, "from_status_": from_status,
                                                      **values}).first()
    if row is None:
        return None
    return row, [Identifier(*item) for item in row.seed_ or []]


def next_status(conn: sa.Connection, request_id: str, status: str) -> RequestStatus | None:
    """Where a running request goes once a task of it ended (status_after), its tasks read here."""
    if status not in ADVANCING:
        return None
    return status_after(status, scalars(conn, _TASK_STATUSES, {"request_id_": request_id}))


def status_after(status: str, statuses: list[str]) -> RequestStatus | None:
    """Where a running request goes once a task of it ended, given all its tasks' statuses: merging when every
    task is terminal, awaiting_manual when the rest wait for a person; None when it stays where it is."""
    if status not in ADVANCING:
        return None
    if all(st in TERMINAL_TASK for st in statuses):
        return RequestStatus.MERGING
    if status != RequestStatus.AWAITING_MANUAL and \
            all(st in TERMINAL_TASK or st == TaskStatus.AWAITING_MANUAL for st in statuses):
        return RequestStatus.AWAITING_MANUAL
    return None


def _audited(row: Any) -> Any:
    """An audit event for the row a data-modifying CTE returns (its `id` and `subject_hash`), as `add_audit` writes
    it; `at_`, `event_`, `actor_` and `details_` are parameters."""
    return sa.insert(AUDIT).from_select(
        ["at", "request_id", "event", "actor", "subject_hash", "details"],
        sa.select(sa.bindparam("at_", type_=AUDIT.c.at.type), row.c.id, sa.bindparam("event_", type_=sa.String),
                  sa.bindparam("actor_", type_=sa.String), row.c.subject_hash,
                  sa.bindparam("details_", type_=AUDIT.c.details.type)).select_from(row)).cte("audited")


# The merge's outcome and its audit event in one statement (PostgreSQL: data-modifying CTEs), for an autocommit
# connection: one round trip instead of four (BEGIN, the UPDATE, the INSERT, COMMIT), and still all or nothing.
@functools.cache
def _complete_with_audit(columns: tuple[str, ...], returning: tuple[str, ...]) -> sa.Select[Any]:
    moved = sa.update(REQUESTS).where(
        REQUESTS.c.id == _ID, REQUESTS.c.status == sa.bindparam("from_status_"),
        REQUESTS.c.lease_owner == sa.bindparam("lease_owner_"),
    ).values({c: sa.bindparam(c) for c in columns}).returning(
        *(REQUESTS.c[c] for c in dict.fromkeys(("id", "subject_hash", *returning)))).cte("moved")
    return sa.select(*(moved.c[c] for c in returning)).add_cte(_audited(moved))


def complete_with_audit(conn: sa.Connection, request_id: str, owner: str, returning: tuple[str, ...], at: Any,
                        event: str, actor: str, details: dict[str, Any], **values: Any) -> AnyRow | None:
    """PostgreSQL: `move_request` from merging under `owner`'s lease, setting `values`, with `add_audit`'s row for it
    written by the same statement; None, and nothing written, when the lease is no longer `owner`'s."""
    params = {"request_id_": request_id, "from_status_": RequestStatus.MERGING, "lease_owner_": owner, "at_": at,
              "event_": event, "actor_": actor, "details_": details, **values}
    return execute(conn, _complete_with_audit(tuple(values), returning), params).first()


# Intake in one statement (PostgreSQL: data-modifying CTEs, all or nothing): the request, its e-mail and its audit
# event, one round trip on an autocommit connection instead of five (BEGIN, three INSERTs, COMMIT).
@functools.cache
def _intake(columns: tuple[str, ...]) -> sa.Select[Any]:
    received = sa.insert(REQUESTS).values({c: sa.bindparam(c, type_=REQUESTS.c[c].type) for c in columns}) \
        .returning(REQUESTS.c.id, REQUESTS.c.subject_hash).cte("received")
    identified = sa.insert(IDENTITIES).from_select(
        ["request_id", "type", "value", "source", "round"],
        sa.select(received.c.id, sa.bindparam("identity_type_", type_=sa.String),
                  sa.bindparam("identity_value_", type_=sa.String), sa.literal("request"), sa.literal(0))
        .select_from(received)).cte("identified")
    return sa.select(received.c.id).add_cte(identified, _audited(received))


def intake_with_audit(conn: sa.Connection, request: dict[str, Any], identity_type: str, identity_value: str,
                      at: Any, actor: str, details: dict[str, Any]) -> None:
    """PostgreSQL: INSERT_REQUEST (`request`: column -> value), INSERT_IDENTITIES of its one identifier (source
    "request", round 0) and `add_audit`'s request.received row, as one statement. A duplicate open request is the
    same IntegrityError as the INSERT's."""
    execute(conn, _intake(tuple(request)), {**request, "identity_type_": identity_type,
                                            "identity_value_": identity_value, "at_": at, "event_": "request.received",
                                            "actor_": actor, "details_": details}).first()
