"""One request's life: intake -> discover -> plan -> execute (one task per system and action) -> merge.

Every step is a plain function over the ledger, safe to run twice: the Dramatiq actors in
workers/ are thin wrappers, and tests call these directly. Steps hand work on through a
`Wakeups` object (the actors' `.send`, or a synchronous stand-in), never by calling each other.
"""

from __future__ import annotations

import hashlib
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, NamedTuple, Protocol

import sqlalchemy as sa
import structlog
from sqlalchemy.exc import DisconnectionError, IntegrityError, OperationalError
from sqlalchemy.orm import Session

from connectors.base import (
    N_,
    Connector,
    ConnectorError,
    Hits,
    Identities,
    Identity,
    IdentityType,
    Note,
    TransientError,
    UnsupportedAction,
    note,
)
from connectors.emails import normalise_email
from connectors.redact import redact
from connectors.sql_driver import execute, scalars
from discovery.bundle.archive import ArchiveStore, ArchiveUnavailable, archive_store
from discovery.bundle.build import FORMAT as BUNDLE_FORMAT
from discovery.bundle.build import BuiltBundle, SystemPart, build_bundle, staged_size
from discovery.bundle.staging import safe_name
from discovery.engine.bundles import bundle_view
from discovery.engine.datamap import DataMapError
from discovery.engine.db import LedgerUnavailable
from discovery.engine.discover import Discovery, discover, locate_error
from discovery.engine.ledger import (
    AuditEvent,
    Request,
    RequestStatus,
    RequestType,
    SubjectIdentity,
    Task,
    TaskStatus,
    utcnow,
)
from discovery.engine.ledger_rows import (
    ADVANCING,
    AUDIT,
    FINISH_TASK,
    IDENTITIES_OF,
    INSERT_HITS,
    INSERT_IDENTITIES,
    INSERT_REQUEST,
    INSERT_TASKS,
    MERGE_HITS,
    MERGE_TASKS,
    REQUESTS,
    TASKS,
    AnyRow,
    Identifier,
    add_audit,
    as_identities,
    audit_details,
    claim_with_seed,
    complete_with_audit,
    identities_of,
    intake_with_audit,
    lock_request,
    move_request,
    next_status,
    status_after,
    update_request,
)
from discovery.engine.planner import NOT_FOUND, OUT_OF_SCOPE, PlanStep, SystemView, plan, refusals, tasks_of
from discovery.engine.runtime import Ended, Runtime, TaskOutcome
from discovery.i18n.languages import UnknownLanguage, language_code

log = structlog.get_logger(__name__)

# Closed by an operator: no task of theirs may start any more (discovery/engine/lifecycle.py).
CLOSED_BY_OPERATOR = (RequestStatus.DENIED, RequestStatus.CANCELLED)
# A system that asks to wait longer than this is asked again after this long; one asking more often than
# _MAX_WAITS in a row is retried like any transient failure (its attempts count), so a task never waits for ever.
_MAX_WAIT = timedelta(hours=24)
_MAX_WAITS = 24

# The task that would have carried out a change the plan refused (recorded as failed, with why).
_CHANGE_TASK = {RequestType.ERASURE: "erase", RequestType.RESTRICTION: "restrict",
                RequestType.LIFT_RESTRICTION: "lift_restriction"}


class Wakeups(Protocol):
    def discover(self, request_id: str) -> None: ...
    def execute(self, task_id: int) -> None: ...
    def merge(self, request_id: str) -> None: ...


class InlineWakeups:
    """Wake-ups for a worker thread that already holds a request's context: what is cheap and local runs here,
    in this thread, instead of a trip through the broker (each trip is a message written, fetched and acknowledged,
    and a wait for a free consumer); everything else goes to `send` (the actors' `.send`).

    - Tasks of systems whose connector says `runs_inline` (a local database query: no vendor rate limit, no long
      call) are claimed by the discovery that plans them, in its own transaction, and run right after it.
    - The task that finishes a request merges it here, with the merge lease taken in the same transaction that saw
      the request's last task end (no second claim). A merge that fails here is handed to the merge actor, which
      decides whether it is worth another try; the sweeper catches anything lost.
    """

    def __init__(self, runtime: Callable[[], Runtime], send: Wakeups) -> None:
        self.runtime, self.send = runtime, send

    def discover(self, request_id: str) -> None:
        self.send.discover(request_id)

    def execute(self, task_id: int) -> None:
        self.send.execute(task_id)

    def merge(self, request_id: str) -> None:
        self.merge_claimed(request_id, None)

    def merge_claimed(self, request_id: str, owner: str | None, inputs: MergeInputs | None = None) -> None:
        """Merge here, under the lease `owner` (taken by finish_task, which may have read the merge's `inputs`
        already) or claiming it (None)."""
        try:
            merge_request(self.runtime(), request_id, owner=owner, inputs=inputs)
        except Exception as exc:  # merge_request released our lease: the merge actor can claim it at once
            log.warning("merge.inline_failed", request_id=request_id, error=one_line(exc))
            self.send.merge(request_id)


class RetryLater(Exception):
    """A transient failure; the task is back to pending and the broker should retry with backoff. `attempt`: the
    task's attempt that failed, which the backoff follows (whichever message carries the retry: the discovery
    that ran the task inline, then the task's own)."""

    def __init__(self, message: str, attempt: int = 0) -> None:
        super().__init__(message)
        self.attempt = attempt


def is_transient(exc: BaseException) -> bool:
    """Worth delivering the message again: the ledger (or a database) is briefly unreachable, or a task said so.
    Anything else is permanent: the work is failed once, with why, and the message is not retried."""
    return isinstance(exc, RetryLater | LedgerUnavailable | OperationalError | DisconnectionError | ArchiveUnavailable)


def one_line(exc: BaseException, limit: int = 300) -> str:
    """An exception as one scrubbed line (type and the first line of its message), for the ledger and logs."""
    return locate_error(exc)[:limit]


class NotFoundError(LookupError):
    pass


class InvalidInput(ValueError):
    pass


class StateConflict(Exception):
    """The request's state does not allow the action (denying a cancelled request, retrying a completed one):
    HTTP 409 `state_conflict`, CLI exit 8."""


class TicketConflict(Exception):
    """A ticket that made a request of another type already: one request per ticket (HTTP 409, CLI exit 8)."""

    def __init__(self, request_id: str, request_type: str) -> None:
        super().__init__(f"this ticket made request {request_id} ({request_type}) already; one request per ticket")
        self.request_id, self.request_type = request_id, request_type


def audit(session: Session, event: str, actor: str, request: Request | None = None, **details: Any) -> None:
    session.add(AuditEvent(event=event, actor=actor, request_id=request.id if request else None,
                           subject_hash=request.subject_hash if request else None, details=details))


def _now(rt: Runtime) -> datetime:
    return rt.clock()


# -- reporting back --------------------------------------------------------------------------

class Reporter(Protocol):
    """Tells the ticket's side what happened (discovery/intake/report_back.py registers one; the engine cannot
    import it). `enqueue` runs inside the transaction of the state change, so what is to be said commits with it;
    `send` runs after the commit and tries to deliver at once."""

    def wants(self, rt: Runtime, req: Request | Ended) -> bool: ...  # anywhere to report it to (no query)
    def enqueue(self, s: Session, rt: Runtime, req: Request, event: str, details: dict[str, Any]) -> None: ...
    def send(self, rt: Runtime, request_id: str) -> None: ...


REPORTERS: list[Reporter] = []


def register_reporter(reporter: Reporter) -> None:
    if reporter not in REPORTERS:
        REPORTERS.append(reporter)


def report(s: Session, rt: Runtime, req: Request, event: str, **details: Any) -> None:
    """Within the state change's transaction: queue what the ticket's side is to hear of `event`
    (request.held, request.extended, request.finished). A reporter failing never undoes the change."""
    reporters = [r for r in REPORTERS if r.wants(rt, req)]  # most requests have no ticket: no savepoint, no flush
    if reporters:
        s.flush()  # the change's own errors (a unique key) stay the caller's, outside the savepoint below
    for reporter in reporters:
        try:
            with s.begin_nested():  # a failed insert rolls back to here, not the state change
                reporter.enqueue(s, rt, req, event, details)
        except Exception as exc:
            log.error("report.enqueue_failed", request_id=req.id, report_event=event, error=one_line(exc))


def report_ended(conn: sa.Connection, rt: Runtime, ended: Ended, event: str) -> None:
    """`report` for a state change written in Core, in its transaction: the request is loaded (as just written) by
    an ORM session on `conn` only when a reporter wants it, which most requests (no ticket, no callback) never do."""
    if any(r.wants(rt, ended) for r in REPORTERS):
        with Session(bind=conn, expire_on_commit=False) as s:  # joins conn's transaction; commits nothing itself
            req = s.get(Request, ended.id, populate_existing=True)
            assert req is not None
            report(s, rt, req, event)
            s.flush()


def send_reports(rt: Runtime, request_id: str) -> None:
    """After the commit: deliver what `report` queued now (what fails is retried later by the sweeper)."""
    for reporter in REPORTERS:
        try:
            reporter.send(rt, request_id)
        except Exception as exc:
            log.warning("report.send_failed", request_id=request_id, error=one_line(exc))


# -- intake ----------------------------------------------------------------------------------

@dataclass
class Submitted:
    request: Request
    created: bool


def submit(rt: Runtime, wake: Wakeups, request_type: str, email: str, ticket: str | None = None,
           actor: str = "cli", *, source: str = "cli", requester_email: str | None = None,
           callback_url: str | None = None, systems: list[str] | None = None, confirm_others: str | None = None,
           language: str | None = None, _attempt: int = 1) -> Submitted:
    """Create a request, or return the open one for the same subject, type and scope (or the same webhook ticket).

    `systems` limits the request to those systems (None: every enabled system). When the requester
    is not the subject (a ticket from another address), the request waits in `awaiting_verification`
    until an operator confirms the identity (`verify_request`). `confirm_others`: an operator's reason to
    carry out a change although it touches records that also name other people (the plan refuses otherwise).
    `language`: what the person is written to in (None: the settings' requests.language).
    """
    if confirm_others is not None and len(confirm_others.strip()) < 3:
        raise InvalidInput("--confirm-others needs a reason (at least 3 characters)")
    try:
        rtype = RequestType(request_type)
    except ValueError:
        raise InvalidInput(f"unknown request type '{request_type}' "
                           f"(one of: {', '.join(t.value for t in RequestType)})") from None
    try:
        lang = language_code(language) if language else rt.settings.requests.language
    except UnknownLanguage as exc:
        raise InvalidInput(str(exc)) from None
    subject = normalise_email(email)
    scope = check_scope(rt, systems)
    requester = normalise_email(requester_email) if requester_email else None
    needs_verification = requester is not None and requester != subject
    subject_hash = rt.subject_hash(subject)
    key = open_key(rtype, subject_hash, scope)
    now = _now(rt)
    request = new_request(
        rt, rtype, subject, subject_hash, now, ticket=ticket, source=source,
        requester=requester if needs_verification else None, callback_url=callback_url,
        status=RequestStatus.AWAITING_VERIFICATION if needs_verification else RequestStatus.RECEIVED,
        systems=scope,
    )
    request.confirm_others = confirm_others.strip() if confirm_others else None
    request.language = lang
    # what the request object was given, as the ORM would insert it (a JSON column left unset stays NULL)
    row = {k: v for k, v in sa.inspect(request).dict.items() if k in REQUESTS.c}
    audited = {"type": rtype.value, "ticket": ticket, "source": source, "needs_verification": needs_verification,
               "systems": scope, "language": lang, "confirm_others": request.confirm_others}  # the operator's reason
    try:
        if rt.autocommit is not None and not ticket and not needs_verification:
            # PostgreSQL, no ticket to check and nobody to tell: the three rows in one statement, one round trip
            with rt.autocommit.connect() as conn:
                intake_with_audit(conn, row, IdentityType.EMAIL.value, subject, utcnow(), actor, audited)
        else:
            with rt.sessions.begin() as s:
                if ticket:
                    _one_request_per_ticket(s, source, ticket, rtype)
                conn = s.connection()  # Core, not the ORM's flush: every request is written here (issue 15)
                execute(conn, INSERT_REQUEST, row)
                execute(conn, INSERT_IDENTITIES, {"request_id": request.id, "type": IdentityType.EMAIL.value,
                                                  "value": subject, "source": "request", "round": 0})
                add_audit(conn, "request.received", actor, request.id, request.subject_hash, **audited)
                if needs_verification:  # the ticket hears why nothing happens yet
                    report(s, rt, request, "request.held")
    except IntegrityError:
        with rt.sessions() as s:
            existing = s.scalars(sa.select(Request).where(sa.or_(
                Request.open_key == key,
                sa.and_(Request.source == source, Request.ticket_ref == ticket, Request.type == rtype.value,
                        Request.ticket_ref.is_not(None), Request.source.in_(["ticket", "freshdesk"]))),
            )).first()
        if existing is None:  # closed between our insert and this read: try again, a few times at most
            if _attempt >= 3:
                raise
            return submit(rt, wake, request_type, email, ticket, actor, source=source,
                          requester_email=requester_email, callback_url=callback_url, systems=scope,
                          confirm_others=confirm_others, language=language, _attempt=_attempt + 1)
        log.info("request.duplicate", request_id=existing.id)
        return Submitted(existing, created=False)
    log.info("request.received", request_id=request.id, type=rtype.value, needs_verification=needs_verification)
    if not needs_verification:
        wake.discover(request.id)
    else:
        send_reports(rt, request.id)
    return Submitted(request, created=True)


def _one_request_per_ticket(s: Session, source: str, ticket: str, rtype: RequestType) -> None:
    """Refuse a second request type on a ticket (the same source and ticket reference). The same type is left to
    the unique indexes (a webhook's ticket, an open request for the same person) that return the first request.
    PostgreSQL: an advisory lock per ticket makes check and insert one step for concurrent intake (SQLite's
    writers are serialised by BEGIN IMMEDIATE already)."""
    if s.get_bind().dialect.name == "postgresql":
        digest = hashlib.sha256(f"ticket:{source}:{ticket}".encode()).digest()
        s.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": int.from_bytes(digest[:8], "big", signed=True)})
    first = s.execute(sa.select(Request.id, Request.type).where(
        Request.source == source, Request.ticket_ref == ticket, Request.type != rtype.value)
        .order_by(Request.received_at, Request.id).limit(1)).first()
    if first is not None:
        raise TicketConflict(first.id, first.type)


def new_request(rt: Runtime, rtype: RequestType, subject: str, subject_hash: str, now: datetime, *,
                ticket: str | None = None, source: str = "cli", requester: str | None = None,
                callback_url: str | None = None, status: RequestStatus = RequestStatus.RECEIVED,
                systems: list[str] | None = None) -> Request:
    """A new, open request row (not yet added to a session): one place that knows how one is made.

    `systems`: the request's scope, already checked (`check_scope`); None: every enabled system.
    """
    scope = sorted(set(systems)) if systems is not None else None
    return Request(
        id=str(uuid.uuid4()), type=rtype.value, subject_email=subject, subject_hash=subject_hash,
        ticket_ref=ticket, source=source, requester_email=requester, callback_url=callback_url, status=status,
        open_key=open_key(rtype, subject_hash, scope), received_at=now, updated_at=now,
        due_at=now + timedelta(days=rt.settings.requests.due_days), systems=scope,
    )


def open_key(rtype: RequestType, subject_hash: str, systems: list[str] | None = None) -> str:
    """The unique key of an open request: one per subject, type and scope (a scope adds a short digest)."""
    key = f"{rtype.value}:{subject_hash}"
    if systems is None:
        return key
    return f"{key}:{hashlib.sha256(','.join(sorted(set(systems))).encode()).hexdigest()[:8]}"


def check_scope(rt: Runtime, systems: list[str] | None) -> list[str] | None:
    """A request's systems, sorted and checked against the enabled systems of the data map (None: all)."""
    if systems is None:
        return None
    names = sorted({str(n).strip() for n in systems})
    if not names or "" in names:
        raise InvalidInput("a request limited to some systems must name at least one system (and no empty name)")
    enabled = {s.name for s in rt.data_map.enabled()}
    unknown = [n for n in names if n not in enabled]
    if unknown:
        raise InvalidInput(f"unknown or disabled system(s): {', '.join(unknown)} "
                           f"(enabled: {', '.join(sorted(enabled))})")
    return names


def verify_request(rt: Runtime, wake: Wakeups, request_id: str, actor: str, note: str) -> Request:
    """An operator confirmed that the requester may act for the subject: the request proceeds."""
    if not note.strip():
        raise InvalidInput("a note saying how the identity was verified is required")
    with rt.sessions.begin() as s:
        req = s.get(Request, request_id, with_for_update=True)
        if req is None:
            raise NotFoundError(f"unknown request {request_id}")
        if req.status != RequestStatus.AWAITING_VERIFICATION:
            raise InvalidInput(f"request {request_id} is not awaiting verification (status: {req.status})")
        req.status = RequestStatus.RECEIVED
        req.verified_at, req.verified_by = _now(rt), actor
        audit(s, "request.verified", actor, req, note=note.strip()[:500])
    wake.discover(request_id)
    return req


# -- discover and plan -----------------------------------------------------------------------

def system_views(rt: Runtime, found: Discovery, systems: list[str] | None = None) -> list[SystemView]:
    """What the planner sees of each enabled system; those outside `systems` (when given) are out of scope."""
    views = []
    policies = rt.policies()
    for name in rt.connectors():
        if systems is not None and name not in systems:
            views.append(SystemView(name, False, {}, in_scope=False))
            continue
        hits = found.hits.get(name)
        state = None if name in found.errors else bool(hits and hits.found)
        views.append(SystemView(name, state, policies[name], found.errors.get(name),
                                skipped=dict(hits.skipped) if hits else {}, others=others(hits, found.identities)))
    return views


def others(hits: Hits | None, subject: Identities) -> int:
    """Distinct identifiers, not the subject's, on records a change in this system would touch."""
    if hits is None:
        return 0
    return len({(i.type, i.value) for ids in hits.touches.values() for i in ids if i not in subject})


def scoped_connectors(rt: Runtime, systems: list[str] | None) -> dict[str, Connector]:
    """The enabled connectors a request may ask (a scoped request asks only its systems)."""
    return {name: conn for name, conn in rt.connectors().items() if systems is None or name in systems}


def dry_run(rt: Runtime, request_type: str, email: str, systems: list[str] | None = None,
            confirm_others: str | None = None) -> tuple[Discovery, list[PlanStep]]:
    """Discover and plan without writing anything anywhere."""
    rtype = RequestType(request_type)
    subject = normalise_email(email)
    scope = check_scope(rt, systems)
    seed = Identities([Identity(IdentityType.EMAIL, subject, "request")])
    found = discover(scoped_connectors(rt, scope), seed, rt.settings.worker.discovery_max_rounds,
                     rt.settings.worker.locate_timeout)
    return found, plan(rtype, system_views(rt, found, scope), confirmed=bool(confirm_others))


def identifiers(rt: Runtime, request_id: str) -> list[dict[str, Any]]:
    """A request's identifiers with where each came from, in the order they were learned (status, API)."""
    with rt.sessions() as s:
        rows = s.scalars(sa.select(SubjectIdentity).where(SubjectIdentity.request_id == request_id)
                         .order_by(SubjectIdentity.round, SubjectIdentity.id))
        return [_identifier(i) for i in rows]


def _identifier(i: SubjectIdentity | AnyRow | Identifier) -> dict[str, Any]:
    """One stored identifier as status, the API and the bundle manifest show it."""
    return {"type": i.type, "value": i.value, "source": i.source, "via": i.via, "via_note": i.via_note,
            "round": i.round}


def reach(found: Discovery) -> dict[str, dict[str, dict[str, int]]]:
    """Per system and entity: the person's records, the distinct identifiers on them, how many of those are
    not the person's, and records left alone. Counts only: what a change would touch, person by person."""
    out: dict[str, dict[str, dict[str, int]]] = {}
    for system, hits in found.hits.items():
        for entity in sorted({*hits.counts, *hits.touches, *hits.skipped}):
            touched = hits.touches.get(entity, set())
            out.setdefault(system, {})[entity] = {
                "records": hits.counts.get(entity, 0),
                "identifiers": len(touched),
                "not_the_subjects": sum(1 for i in touched if i not in found.identities),
                "left_alone": sum(hits.skipped.get(entity, {}).values()),
            }
    return out


def plan_report(found: Discovery, steps: list[PlanStep]) -> dict[str, Any]:
    """What a dry run shows (CLI --json and the API alike): identifiers with their provenance, the steps,
    what the plan refused and why, and systems whose locate failed."""
    return {
        "identifiers": [{"type": i.type.value, "value": i.value, "source": i.source, "via": i.via or None,
                         "round": found.learned_in_round.get((i.type, i.value), 0)} for i in found.identities],
        "steps": [s.to_dict() for s in steps],
        "reach": reach(found),
        "refused": [{"system": s.system, "reason": s.reason} for s in refusals(steps)],
        "locate_errors": dict(found.errors),
        "identifiers_refused": dict(found.refused),
    }


def run_discovery(rt: Runtime, wake: Wakeups, request_id: str) -> None:
    """Discover, plan and write the tasks, under the request's lease. A permanent failure (a bug, a value the ledger
    refuses) fails the request once with a one-line reason, rather than leaving it to be re-discovered for ever."""
    owner = str(uuid.uuid4())
    try:
        _discover_and_plan(rt, wake, request_id, owner)
    except NotFoundError:
        raise
    except Exception as exc:
        if is_transient(exc):
            _release_request(rt, request_id, owner)  # another delivery may take it at once
            raise
        log.error("request.discovery_failed", request_id=request_id, error=one_line(exc))
        fail_request(rt, request_id, f"discovery failed: {one_line(exc)}", owner)


def fail_request(rt: Runtime, request_id: str, error: str, owner: str | None = None) -> bool:
    """Close a request that cannot go on (discovery crashed), audited; False if it had moved on meanwhile, or (with
    `owner`) another process has taken its discovery over."""
    with rt.sessions.begin() as s:
        req = s.get(Request, request_id, with_for_update=True)
        if req is None or req.status not in (RequestStatus.RECEIVED, RequestStatus.DISCOVERING):
            return False
        if owner is not None and req.lease_owner not in (None, owner):
            return False
        req.status, req.error = RequestStatus.FAILED, error[:2000]
        req.completed_at = _now(rt)
        req.open_key = None  # closed: the person may ask again
        req.lease_until = req.lease_owner = None
        audit(s, "request.failed", "worker", req, error=error[:500])
        report(s, rt, req, "request.finished")
        ended = Ended.of(req)
    run_completion_hooks(rt, ended)  # report back: the ticket hears that it failed
    return True


def _lease(rt: Runtime) -> timedelta:
    return timedelta(seconds=rt.settings.worker.task_lease_seconds)


def lease_is_live(req: Request | AnyRow, now: datetime) -> bool:
    """Someone is discovering or merging this request and renewed the lease lately."""
    return req.lease_until is not None and req.lease_until >= now


def _release_request(rt: Runtime, request_id: str, owner: str) -> None:
    """Give up our lease on a request's phase (a transient failure: the retry need not wait for it to lapse)."""
    try:
        with rt.sessions.begin() as s:
            s.execute(sa.update(Request).where(Request.id == request_id, Request.lease_owner == owner)
                      .values(lease_until=None, lease_owner=None))
    except Exception:  # the ledger is away: the lease lapses by itself
        log.warning("request.lease_release_failed", request_id=request_id)


_Claim = tuple[AnyRow, list[Identifier], list[int], str | None]
STOPPED_EACH_TIME = "the worker stopped before finishing each time"


class _GaveUp(NamedTuple):
    """A phase taken over more often than worker.max_attempts allows: each attempt stopped its worker."""

    attempts: int


def _claim_discovery(rt: Runtime, request_id: str, owner: str, now: datetime, claim: dict[str, Any],
                     columns: tuple[str, ...]) -> _Claim | _GaveUp | None:
    """The claim in a transaction (every ledger; on PostgreSQL when the one-statement claim found the request no
    longer received): the request's row, its identifiers, and for a request planned already its pending tasks and
    status (None: claimed here, to be discovered); None while another process holds a live discovery lease; _GaveUp
    (the lease taken, for the caller to fail the request) when this takeover is one attempt too many."""
    with rt.engine.begin() as conn:  # Core: no ORM session on the hot path (issue 15)
        req = move_request(conn, request_id, RequestStatus.RECEIVED, None, columns, **claim)
        if req is None:
            req = lock_request(conn, request_id, *columns, "lease_until", "subject_hash")
        if req is None:
            raise NotFoundError(f"unknown request {request_id}")
        pending: list[int] = []
        status = None
        if req.status == RequestStatus.DISCOVERING and req.lease_owner == owner:  # claimed above
            pass
        elif req.status not in (RequestStatus.RECEIVED, RequestStatus.DISCOVERING):
            pending = list(conn.scalars(sa.select(TASKS.c.id).where(
                TASKS.c.request_id == request_id, TASKS.c.status == TaskStatus.PENDING).order_by(TASKS.c.id)))
            status = req.status
        elif req.status == RequestStatus.DISCOVERING and lease_is_live(req, now):
            log.info("request.discovery_busy", request_id=request_id)
            return None
        else:
            taken_over = req.status == RequestStatus.DISCOVERING
            if taken_over:
                log.warning("request.discovery_taken_over", request_id=request_id)
                add_audit(conn, "request.discovery_taken_over", "worker", request_id, req.subject_hash)
            update_request(conn, request_id, **claim)
            if taken_over:  # a discovery that stops its worker every time (out of memory ...) is not run for ever
                attempts = 1 + len(audit_details(conn, request_id, "request.discovery_taken_over"))
                if attempts > rt.settings.worker.max_attempts:
                    return _GaveUp(attempts)
        seed = [Identifier(*r) for r in execute(conn, IDENTITIES_OF, {"request_id_": request_id})]
        return req, seed, pending, status


def _discover_and_plan(rt: Runtime, wake: Wakeups, request_id: str, owner: str) -> None:
    now, lease = _now(rt), _lease(rt)
    # Claim: a received request (the usual case, in one statement), or one whose discovery lease lapsed (its
    # worker died). A live lease means another process is discovering it right now: leave it alone.
    claim = {"status": RequestStatus.DISCOVERING, "lease_until": now + lease, "lease_owner": owner, "updated_at": now}
    columns = ("status", "lease_owner", "type", "systems", "confirm_others")
    got: _Claim | _GaveUp | None = None
    if rt.autocommit is not None:  # PostgreSQL: the usual case's claim and identifiers in one round trip
        with rt.autocommit.connect() as conn:
            fast = claim_with_seed(conn, request_id, RequestStatus.RECEIVED, columns, **claim)
        if fast is not None:
            got = (*fast, [], None)
    if got is None:
        got = _claim_discovery(rt, request_id, owner, now, claim, columns)
        if got is None:  # another process is discovering it right now
            return
    if isinstance(got, _GaveUp):
        log.warning("request.discovery_abandoned", request_id=request_id, attempts=got.attempts)
        fail_request(rt, request_id, f"discovery gave up after {got.attempts} attempts: {STOPPED_EACH_TIME}", owner)
        return
    req, seed_rows, pending, status = got
    seed = as_identities(seed_rows)
    rtype = RequestType(req.type)
    scope = list(req.systems) if req.systems is not None else None
    confirm = req.confirm_others
    if status is not None:  # already planned: a redelivered message only re-wakes pending tasks
        for task_id in pending:
            wake.execute(task_id)
        return

    inline = isinstance(wake, InlineWakeups)
    keeper = LeaseKeeper(rt, request_id, lease, owner=owner)
    try:
        asked = scoped_connectors(rt, scope)
        found = discover(asked, seed, rt.settings.worker.discovery_max_rounds, rt.settings.worker.locate_timeout)
        steps = plan(rtype, system_views(rt, found, scope), confirmed=bool(confirm))
    finally:
        keeper.stop()
    wanted = tasks_of(steps)

    with rt.engine.begin() as conn:
        # The plan, and the discovery's lease given up, only if the lease is still ours (one statement).
        planned = move_request(conn, request_id, RequestStatus.DISCOVERING, owner, ("subject_hash",),
                               plan=[step.to_dict() for step in steps],
                               status=RequestStatus.RUNNING if wanted else RequestStatus.MERGING,
                               lease_until=None, lease_owner=None)
        if planned is None:
            # another delivery got here first, or took over after our lease lapsed: its plan is the one kept
            log.warning("request.discovery_superseded", request_id=request_id)
            return
        # What the claim read: while we hold the discovery's lease, nothing else adds identities to this request.
        have = {(i.type, i.value) for i in seed}
        learned: list[dict[str, Any]] = [
            {"request_id": request_id, "type": ident.type.value, "value": ident.value, "source": ident.source,
             "via": ident.via or None, "via_note": ident.via_note.to_dict() if ident.via_note else None,
             "round": found.learned_in_round.get((ident.type, ident.value), 0)}
            for ident in found.identities if (ident.type, ident.value) not in have]
        if learned:
            execute(conn, INSERT_IDENTITIES, learned)
        hit_rows: list[dict[str, Any]] = [
            {"request_id": request_id, "system": name, "found": bool(hits and hits.found),
             "counts": dict(hits.counts) if hits else {}, "error": found.errors.get(name),
             "skipped": dict(hits.skipped) if hits and hits.skipped else None}
            for name in asked for hits in [found.hits.get(name)]]
        if hit_rows:
            execute(conn, INSERT_HITS, hit_rows)
        known = Known([*seed_rows, *(Identifier(
            r["type"], r["value"], r["source"], r["via"], r["via_note"], r["round"]) for r in learned)],
            {r["system"]: Hit(r["system"], r["found"], r["error"]) for r in hit_rows})
        # A refused system gets a failed task: the request ends completed_with_errors, saying why. Tasks of quick,
        # local systems are claimed here, in this transaction, and run by this worker right after it
        # (InlineWakeups); the others wait for a worker of their own.
        now = _now(rt)
        rows = [_task_row(request_id, step.system, _CHANGE_TASK[rtype], [], TaskStatus.FAILED, error=step.reason)
                for step in refusals(steps)]
        for (system, action), entities in wanted.items():
            if inline and rt.connector(system).runs_inline:  # claimed as _claim_task would
                rows.append(_task_row(request_id, system, action, entities, TaskStatus.RUNNING, attempts=1,
                                      lease_until=now + lease, started_at=now, updated_at=now))
            else:
                rows.append(_task_row(request_id, system, action, entities, TaskStatus.PENDING))
        ids = scalars(conn, INSERT_TASKS, rows) if rows else []
        add_audit(conn, "request.planned", "worker", request_id, planned.subject_hash,
                  systems_found=sorted(n for n, h in found.hits.items() if h.found),
                  tasks=len(wanted), rounds=found.rounds, locate_errors=sorted(found.errors),
                  refused=sorted(step.system for step in refusals(steps)),
                  identifiers_refused=found.refused or None, confirm_others=bool(confirm))
        claimed = [Claimed(task_id, request_id, row["system"], row["action"], list(row["entities"]), 1, None, 0,
                           found.identities, now, known)
                   for task_id, row in zip(ids, rows, strict=True) if row["status"] == TaskStatus.RUNNING]
        task_ids = [task_id for task_id, row in zip(ids, rows, strict=True) if row["status"] == TaskStatus.PENDING]
    log.info("request.planned", request_id=request_id, tasks=len(wanted), rounds=found.rounds,
             locate_errors=len(found.errors))
    for task_id in task_ids:  # first, so they start on other workers while this one runs its own
        wake.execute(task_id)
    retry: RetryLater | None = None
    for job in claimed:
        try:
            run_claimed(rt, wake, job)
        except RetryLater as exc:  # put back to pending already; the others still run now
            retry = exc
    if retry is not None:  # this message is delivered again after a backoff and wakes what is pending then
        raise retry
    if not wanted:
        wake.merge(request_id)


def _task_row(request_id: str, system: str, action: str, entities: list[Any], status: TaskStatus, *,
              error: str | None = None, attempts: int = 0, lease_until: datetime | None = None,
              started_at: datetime | None = None, updated_at: datetime | None = None) -> dict[str, Any]:
    """A new task's row for one multi-row INSERT: every row names the same columns."""
    return {"request_id": request_id, "system": system, "action": action, "entities": entities, "status": status,
            "error": error, "attempts": attempts, "lease_until": lease_until, "started_at": started_at,
            "updated_at": updated_at or utcnow()}


# -- execute ---------------------------------------------------------------------------------

@dataclass
class Claimed:
    """A task this process claimed (its lease written), with what running it needs."""

    id: int
    request_id: str
    system: str
    action: str
    entities: list[Any]
    attempts: int
    retrying_since: datetime | None
    waits: int
    identities: Identities
    started: datetime
    known: Known | None = None  # set by the discovery that planned it: what the merge would read back


@dataclass
class Known:
    """What the discovery of a request wrote and still holds, handed to the merge of the request's inline tasks so
    it need not read it back: the identifiers (IDENTITIES_OF's rows, in order) and where it looked (MERGE_HITS').
    Nothing changes them once planned: only a discovery, under its lease, writes identifiers and hits."""

    identifiers: list[Identifier]
    hits: dict[str, Hit]


class Hit(NamedTuple):
    system: str
    found: bool
    error: str | None


def execute_task(rt: Runtime, wake: Wakeups, task_id: int) -> None:
    claimed = _claim_task(rt, task_id)
    if claimed is not None:
        run_claimed(rt, wake, claimed)


def _claim_task(rt: Runtime, task_id: int) -> Claimed | None:
    now = _now(rt)
    lease = timedelta(seconds=rt.settings.worker.task_lease_seconds)
    with rt.sessions.begin() as s:
        # Claim: only a pending task, or a running one whose worker stopped renewing its lease.
        # A waiting task once its retry_at has passed; never a task of a request an operator closed.
        row = s.execute(
            sa.update(Task)
            .where(Task.id == task_id)
            .where(sa.or_(Task.status == TaskStatus.PENDING,
                          sa.and_(Task.status == TaskStatus.WAITING, Task.retry_at <= now),
                          sa.and_(Task.status == TaskStatus.RUNNING, Task.lease_until < now)))
            .where(~sa.exists().where(Request.id == Task.request_id, Request.status.in_(CLOSED_BY_OPERATOR)))
            .values(status=TaskStatus.RUNNING, attempts=Task.attempts + 1, lease_until=now + lease,
                    started_at=now, updated_at=now, retry_at=None)
            .returning(Task.request_id, Task.system, Task.action, Task.entities, Task.attempts, Task.retrying_since,
                       Task.waits),
            execution_options={"synchronize_session": False}).first()
        if row is None:
            if s.scalar(sa.select(Task.id).where(Task.id == task_id)) is None:
                raise NotFoundError(f"unknown task {task_id}")
            return None  # done already, or another worker holds it
        return Claimed(task_id, row.request_id, row.system, row.action, list(row.entities), row.attempts,
                       row.retrying_since, row.waits, identities_of(s.connection(), row.request_id), now)


def run_claimed(rt: Runtime, wake: Wakeups, claimed: Claimed) -> None:
    """Run a task this process claimed, and store its outcome (the last one to end moves the request on)."""
    task_id, request_id, system, action = claimed.id, claimed.request_id, claimed.system, claimed.action
    entities, attempts, identities, now = claimed.entities, claimed.attempts, claimed.identities, claimed.started
    retrying_since, waits = claimed.retrying_since, claimed.waits
    lease = timedelta(seconds=rt.settings.worker.task_lease_seconds)
    if attempts > rt.settings.worker.max_attempts:
        # Taken over after expired leases more often than allowed: each attempt stopped the worker (killed,
        # out of memory). Give up rather than start it again for ever.
        log.warning("task.abandoned", request_id=request_id, task_id=task_id, system=system, attempts=attempts)
        why = f"gave up after {attempts} attempts: {STOPPED_EACH_TIME}"
        finish_task(rt, wake, task_id, TaskStatus.FAILED, why, _failure(note(
            N_("gave up after {attempts} attempts: {error}"), attempts=attempts,
            error=STOPPED_EACH_TIME)), request_id=request_id)
        return
    # debug: task.finish names the task too; a task that never finishes shows in `dsar status` and its lease
    log.debug("task.start", request_id=request_id, task_id=task_id, system=system, action=action, attempt=attempts)

    status, error, result = TaskStatus.DONE, None, None
    keeper = LeaseKeeper(rt, task_id, lease)

    def retry_or_give_up(reason: str, note_error: Note | str) -> tuple[TaskStatus, str, dict[str, Any]]:
        """A transient failure: back to pending for a later attempt (RetryLater), unless the attempts or the time
        spent retrying since the first failure (worker.system_retry_budget) are used up: then failed, one line."""
        spent = (_now(rt) - (retrying_since or now)).total_seconds()
        if attempts < rt.settings.worker.max_attempts and spent < rt.settings.worker.system_retry_budget:
            _release(rt, task_id, reason, first_failure=now)
            log.warning("task.retry", request_id=request_id, task_id=task_id, system=system, error=reason)
            raise RetryLater(f"{system} {action}: {reason}", attempt=attempts) from None
        log.warning("task.gave_up", request_id=request_id, task_id=task_id, system=system, attempts=attempts,
                    seconds=round(spent))
        budget = "" if attempts >= rt.settings.worker.max_attempts else \
            f" in {spent:.0f}s (worker.system_retry_budget)"
        return (TaskStatus.FAILED, f"gave up after {attempts} attempts{budget}: {reason}",
                _failure(note(N_("gave up after {attempts} attempts: {error}"), attempts=attempts, error=note_error)))

    try:
        conn = rt.connector(system)
        if action == "export":
            result = rt.staging.write(request_id, system, conn.export(identities, entities))
        else:
            receipt = {"erase": conn.erase, "restrict": conn.restrict,
                       "lift_restriction": conn.lift_restriction}[action](identities, entities)
            result = receipt.to_dict()
            if receipt.manual_steps:
                status = TaskStatus.AWAITING_MANUAL
    except UnsupportedAction as exc:
        status, error = TaskStatus.UNSUPPORTED, exc.message
        result = _failure(_error_note(exc, N_("this system cannot do this: {error}")))
    except TransientError as exc:
        if exc.retry_after is not None and waits < _MAX_WAITS:
            keeper.stop()
            until = _now(rt) + min(timedelta(seconds=max(1.0, exc.retry_after)), _MAX_WAIT)
            _wait(rt, task_id, until, redact(exc.message))
            log.warning("task.waiting", request_id=request_id, task_id=task_id, system=system,
                        retry_at=until.isoformat())
            return  # acknowledged: the sweeper wakes it at retry_at; no attempt and no retry budget spent
        status, error, result = retry_or_give_up(redact(exc.message), _error_note(exc))
    except ConnectorError as exc:
        status, error = TaskStatus.FAILED, redact(exc.message)
        result = _failure(_error_note(exc))
    except OperationalError as exc:  # a driver's connection error the connector let through: transient
        reason = f"database unreachable: {one_line(exc)}"
        status, error, result = retry_or_give_up(reason, reason)
    except Exception as exc:  # a bug or an unexpected library error: fail the task, keep the worker
        log.exception("task.crash", request_id=request_id, task_id=task_id, system=system)
        status, error = TaskStatus.FAILED, f"internal error: {one_line(exc)}"
        result = _failure(note(N_("internal error: {error}"), error=error.removeprefix("internal error: ")))
    finally:
        keeper.stop()
    try:
        finish_task(rt, wake, task_id, status, error, result, request_id=request_id, known=claimed.known)
    except Exception as exc:
        if is_transient(exc):
            raise  # the ledger is away: the message is retried, or the sweeper takes the task over later
        # The outcome could not be stored (a value JSON cannot hold, a row the ledger refuses). Left running,
        # the task would be taken over and re-run for ever: record it failed with a minimal, storable result.
        why = f"could not store the result: {one_line(exc)}".replace("\x00", "")  # PostgreSQL refuses NUL
        log.error("task.store_failed", request_id=request_id, task_id=task_id, system=system, error=why)
        finish_task(rt, wake, task_id, TaskStatus.FAILED, f"internal error: {why}",
                    _failure(note(N_("internal error: {error}"), error=why)), request_id=request_id)


def _error_note(exc: ConnectorError, wrapper: str = N_("the system answered with an error: {error}")) -> Note:
    """A failure as a person reads it: the connector's Note (its text values scrubbed like `error`), or the
    error text as a value in a translated sentence."""
    if exc.note is None:
        return note(wrapper, error=redact(exc.message))
    return Note(exc.note.msgid, {k: redact(v) if isinstance(v, str) else v for k, v in exc.note.params.items()})


def _failure(why: Note) -> dict[str, Any]:
    """A failed or unsupported task's result: no receipt, only why (the bundle page shows it translated)."""
    return {"error_note": why.to_dict()}


class LeaseKeeper:
    """Renews a lease while its holder works, so only a dead worker's work is taken over: a running task's (by id),
    or a request's discover or merge phase (by id and `owner`, the token its claim wrote). Renewed a third of the
    lease after the last renewal, by the process's one renewing thread (_RENEWALS); none runs once stop() returned."""

    def __init__(self, rt: Runtime, key: int | str, lease: timedelta, owner: str | None = None) -> None:
        self.rt, self.key, self.lease, self.owner = rt, key, lease, owner
        self.interval = lease.total_seconds() / 3
        self._lock = threading.Lock()
        self._stopped = False
        _RENEWALS.add(self)

    def renew(self) -> None:
        with self._lock:
            if self._stopped:
                return
            until = _now(self.rt) + self.lease
            try:
                with self.rt.sessions.begin() as s:
                    if self.owner is None:
                        s.execute(sa.update(Task).where(Task.id == self.key, Task.status == TaskStatus.RUNNING)
                                  .values(lease_until=until))
                    else:
                        s.execute(sa.update(Request).where(Request.id == self.key, Request.lease_owner == self.owner)
                                  .values(lease_until=until))
            except Exception:  # the ledger is briefly away: the next beat tries again
                log.warning("lease.renew_failed", key=str(self.key))

    def stop(self) -> None:
        _RENEWALS.remove(self)
        with self._lock:  # a renewal under way finishes first; none starts after
            self._stopped = True


class _Renewals:
    """One thread per process renews every live lease when it is due. A thread per lease cost a thread start and a
    join for each phase, three per request; renewals are one short UPDATE each, so one thread keeps up."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._due: dict[LeaseKeeper, float] = {}
        self._thread: threading.Thread | None = None
        self._wake_at = 0.0  # when the waiting thread looks again (stale, so in the past, while it renews)

    def add(self, keeper: LeaseKeeper) -> None:
        with self._cond:
            at = self._due[keeper] = time.monotonic() + keeper.interval
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="dsar-leases", daemon=True)
                self._thread.start()
            # Woken only if it would look too late: three leases per request each woke it for nothing (a thread
            # switch each), as a new lease is almost always due after the ones it waits for.
            if at < self._wake_at:
                self._cond.notify()

    def remove(self, keeper: LeaseKeeper) -> None:
        with self._cond:
            self._due.pop(keeper, None)

    def _run(self) -> None:
        while True:
            with self._cond:
                now = time.monotonic()
                due = [k for k, at in self._due.items() if at <= now]
                for keeper in due:
                    self._due[keeper] = now + keeper.interval
                if not due:
                    timeout = max(0.01, min(self._due.values(), default=now + 60) - now)
                    self._wake_at = now + timeout
                    self._cond.wait(timeout=timeout)
                    continue
            for keeper in due:
                keeper.renew()


_RENEWALS = _Renewals()


def _release(rt: Runtime, task_id: int, error: str, first_failure: datetime | None = None) -> None:
    """Back to pending for a later attempt; `first_failure` (when this attempt started) starts the retry budget's
    clock unless an earlier failure did."""
    with rt.sessions.begin() as s:
        task = s.get(Task, task_id, with_for_update=True)
        if task is None or task.status != TaskStatus.RUNNING:
            return
        task.status, task.error, task.lease_until, task.updated_at = TaskStatus.PENDING, error, None, _now(rt)
        if task.retrying_since is None:
            task.retrying_since = first_failure
        _cancel_if_closed(s, task)


def _wait(rt: Runtime, task_id: int, until: datetime, error: str) -> None:
    """The system asked to wait (a rate limit resets at `until`): park the task without spending an attempt, and
    pause the retry budget's clock for as long as the wait lasts."""
    now = _now(rt)
    with rt.sessions.begin() as s:
        task = s.get(Task, task_id, with_for_update=True)
        if task is None or task.status != TaskStatus.RUNNING:
            return
        task.status, task.lease_until, task.updated_at = TaskStatus.WAITING, None, now
        task.retry_at, task.waits, task.attempts = until, task.waits + 1, max(0, task.attempts - 1)
        task.error = f"waiting until {until:%Y-%m-%d %H:%M} UTC (vendor rate limit): {error}"[:2000]
        if task.retrying_since is not None:
            task.retrying_since += until - now
        _cancel_if_closed(s, task)


def _cancel_if_closed(s: Session, task: Task) -> None:
    """A task put back for later while an operator denied or cancelled its request: it will never run."""
    status = s.scalar(sa.select(Request.status).where(Request.id == task.request_id))
    if status in CLOSED_BY_OPERATOR:
        task.status, task.retry_at, task.error = TaskStatus.CANCELLED, None, f"request {status}; not run"


def finish_task(rt: Runtime, wake: Wakeups, task_id: int, status: TaskStatus, error: str | None,
                result: dict[str, Any] | None, actor: str = "worker", note: str | None = None,
                request_id: str | None = None, known: Known | None = None) -> None:
    """Record a task's outcome; the one call that sees every task terminal moves the request on. With wake-ups that
    merge inline, that call also takes the merge lease in the same transaction and merges right here (`known`: what
    the discovery that planned the task holds of the request, not read again for the merge)."""
    now = _now(rt)
    merge_owner = str(uuid.uuid4()) if isinstance(wake, InlineWakeups) else None
    with rt.engine.begin() as conn:
        if request_id is None:
            request_id = conn.scalar(sa.select(TASKS.c.request_id).where(TASKS.c.id == task_id))
            if request_id is None:
                raise NotFoundError(f"unknown task {task_id}")
        # Lock the request row first: concurrent finishers of one request serialise here, so
        # exactly one of them sees all tasks terminal (under READ COMMITTED both could miss it).
        req = lock_request(conn, request_id)  # every column: the last task's finisher may read the merge's inputs
        assert req is not None
        values: dict[str, Any] = {"status": status, "error": error, "finished_at": now, "lease_until": None,
                                  "updated_at": now}
        if result is not None:
            values["result"] = result
        row = execute(conn, FINISH_TASK, {"task_id_": task_id, **values}).one()
        add_audit(conn, f"task.{status}", actor, request_id, req.subject_hash, system=row.system, action=row.action,
                  note=note, changed=(result or {}).get("changed"))
        tasks = list(execute(conn, MERGE_TASKS, {"request_id_": request_id})) if req.status in ADVANCING else []
        moved = status_after(req.status, [t.status for t in tasks])
        merge_now = moved == RequestStatus.MERGING
        inputs = None
        if merge_now and merge_owner is not None:
            # The merge below starts under this lease, from what this transaction reads: no claim of its own.
            update_request(conn, request_id, status=moved, lease_until=now + _lease(rt), lease_owner=merge_owner)
            try:
                inputs = merge_inputs(rt, conn, req, tasks, known)
            except sa.exc.SQLAlchemyError:
                raise  # the transaction is lost: the outcome is stored by the retry
            except Exception as exc:  # never lose the task's outcome over it: the merge reads them itself
                log.warning("merge.inputs_failed", request_id=request_id, error=one_line(exc))
        elif moved is not None:
            update_request(conn, request_id, status=moved)
        closed = req.status in CLOSED_BY_OPERATOR
    if closed:  # it ran on after the request was denied or cancelled: the receipt stays, staged data has no use
        rt.staging.discard(request_id)
    log.info("task.finish", request_id=request_id, task_id=task_id, system=row.system, action=row.action,
             status=str(status))
    run_task_hooks(rt, TaskOutcome(task_id, request_id, row.system, row.action, str(status), row.result))
    if merge_now:
        if merge_owner is not None:
            assert isinstance(wake, InlineWakeups)
            wake.merge_claimed(request_id, merge_owner, inputs)
        else:
            wake.merge(request_id)


def run_task_hooks(rt: Runtime, task: TaskOutcome) -> None:
    """After a task's outcome is stored (e.g. a legal hold applied: schedule its end). A failing hook is logged
    and audited; it never undoes the task, and the completion hooks get another go at the same work."""
    for hook in rt.task_hooks:
        name = getattr(hook, "__qualname__", repr(hook))
        try:
            hook(rt, task)
        except Exception as exc:
            log.error("task.hook_failed", request_id=task.request_id, task_id=task.id, hook=name,
                      error=one_line(exc))
            with rt.sessions.begin() as s:
                audit(s, "task.hook_failed", "worker", s.get(Request, task.request_id), hook=name, task_id=task.id,
                      error=one_line(exc))


def confirm_manual(rt: Runtime, wake: Wakeups, request_id: str, system: str, note: str, actor: str) -> int:
    """A person did the manual step for `system`: complete its awaiting tasks, audited."""
    if not note.strip():
        raise InvalidInput("a note saying what was done is required")
    with rt.sessions() as s:
        if s.get(Request, request_id) is None:
            raise NotFoundError(f"unknown request {request_id}")
        ids = list(s.scalars(sa.select(Task.id).where(Task.request_id == request_id, Task.system == system,
                                                       Task.status == TaskStatus.AWAITING_MANUAL)))
    if not ids:
        raise InvalidInput(f"request {request_id} has no task awaiting a manual step in system '{system}'")
    for task_id in ids:
        finish_task(rt, wake, task_id, TaskStatus.DONE, None, None, actor=actor, note=note.strip()[:500])
    return len(ids)


# -- merge -----------------------------------------------------------------------------------

def bundle_key(request_id: str, owner: str) -> str:
    """The bundle's key in the archive store (the store adds its prefix); the ledger keeps the store URI. Each merge
    writes its own object (`owner`: the merge's lease token), so a merge taken over after its lease lapsed can never
    overwrite the bundle another merge recorded: the SHA-256 in the ledger is always that of the stored object."""
    return f"{safe_name(request_id)}-{safe_name(owner)[:8]}.zip"


def merge_request(rt: Runtime, request_id: str, progress: Callable[[str, str, int], None] | None = None,
                  owner: str | None = None, inputs: MergeInputs | None = None) -> BuiltBundle | None:
    """Build and store the bundle of a request whose tasks are all terminal, under the request's merge lease.
    `owner`: the lease this process took already (finish_task, when the last task ended here); None: claim it.
    `inputs`: what finish_task read for the merge in that same transaction (with `owner` only)."""
    claimed = owner is not None
    assert inputs is None or claimed, "merge inputs are read under the merge's lease"
    owner = owner or str(uuid.uuid4())
    try:
        return _merge(rt, request_id, owner, progress, claimed, inputs)
    except Exception:
        _release_request(rt, request_id, owner)  # the retry (or the sweeper) need not wait for the lease
        raise


@dataclass
class MergeInputs:
    """What a merge builds the bundle from, read in one transaction: the merge's own, or (inline) the one in which the
    request's last task ended, which saves the merge a transaction of its own."""

    request_type: str
    lang: str
    header: dict[str, Any]
    parts: list[SystemPart]
    failed: list[AnyRow]
    locate_failed: dict[str, str]
    reported: bool = True  # a reporter wants the request (a ticket, a callback): its outcome is queued with it


def merge_inputs(rt: Runtime, conn: sa.Connection, req: AnyRow, tasks: list[AnyRow] | None = None,
                 known: Known | None = None) -> MergeInputs:
    """Read on `conn` what the merge of `req` (its row, every column) needs; `tasks`: its tasks, if read already;
    `known`: its identifiers and hits as its discovery wrote them."""
    request_id = req.id
    by_request = {"request_id_": request_id}
    if known is not None:
        identities = [_identifier(i) for i in known.identifiers]
        hits: dict[str, Any] = dict(known.hits)
    else:
        identities = [_identifier(i) for i in execute(conn, IDENTITIES_OF, by_request)]
        hits = {h.system: h for h in execute(conn, MERGE_HITS, by_request)}
    if tasks is None:
        tasks = list(execute(conn, MERGE_TASKS, by_request))
    request_type = req.type
    lang = req.language or rt.settings.requests.language
    scope = list(req.systems) if req.systems is not None else None
    header = {
        "format": BUNDLE_FORMAT,
        "request": {"id": req.id, "type": req.type, "ticket": req.ticket_ref,
                    "received_at": req.received_at.isoformat(), "due_at": req.due_at.isoformat()},
        "subject": {"identifiers": identities},
        "generated_at": _now(rt).isoformat(),
        "plan": req.plan or [],
    }
    # Manual steps a person confirmed (`dsar confirm`): the receipts say when and what was done. Only a task
    # whose receipt asked for a manual step can have been confirmed: the audit trail is read only then.
    confirmed: dict[tuple[str, str], list[dict[str, Any]]] = {}
    manual = any((t.result or {}).get("manual_steps") for t in tasks)
    for ev in () if not manual else conn.execute(sa.select(AUDIT.c.at, AUDIT.c.details).where(
            AUDIT.c.request_id == request_id, AUDIT.c.event == f"task.{TaskStatus.DONE}",
            AUDIT.c.actor != "worker").order_by(AUDIT.c.id)):
        if ev.details.get("note"):
            confirmed.setdefault((str(ev.details.get("system")), str(ev.details.get("action"))), []).append(
                {"at": ev.at.isoformat(), "note": ev.details["note"]})
    parts: list[SystemPart] = []
    for system, hit in sorted(hits.items()):
        if not hit.found and not hit.error and not any(t.system == system for t in tasks):
            parts.append(SystemPart(system, "skipped", reason=NOT_FOUND))
        elif hit.error and not any(t.system == system for t in tasks):  # nothing else would say it failed
            parts.append(SystemPart(system, "failed", reason=f"locate failed: {hit.error}",
                                    reason_note=note(N_("the search in this system failed: {error}"),
                                                     error=hit.error).to_dict()))
    if scope is not None:
        enabled = {system.name for system in rt.data_map.enabled()}
        for system in sorted(enabled - set(scope) - set(hits)):
            parts.append(SystemPart(system, "skipped", reason=OUT_OF_SCOPE))
    for t in tasks:
        staged = t.result if t.action == "export" and t.status == TaskStatus.DONE else None
        failure = (t.result or {}).get("error_note")
        receipt = t.result if t.action != "export" and t.result and not failure else None
        parts.append(SystemPart(t.system, str(t.status), t.action, staged=staged, receipt=receipt,
                                reason=t.error, reason_note=failure,
                                finished_at=t.finished_at.isoformat() if t.finished_at else None,
                                confirmations=confirmed.get((t.system, t.action), [])))
    failed = [t for t in tasks if t.status == TaskStatus.FAILED]
    # A system that could not be searched may hold more of the person than its tasks reached: never complete.
    locate_failed = {system: hit.error for system, hit in sorted(hits.items()) if hit.error}
    # decided by fields set at intake (source, ticket, callback URL), so read here it holds when the merge ends
    reported = any(r.wants(rt, Ended.of(req)) for r in REPORTERS)
    return MergeInputs(request_type, lang, header, parts, failed, locate_failed, reported)


class _MergeClaim(NamedTuple):
    inputs: MergeInputs | None  # None: nothing to merge now (or given up)
    dead: list[str]  # lease owners of earlier merges that lapsed: each may have stored a bundle nothing records
    gave_up: int = 0  # taken over once too often (worker.max_attempts): the attempts, for the caller to fail it


def _claim_merge(rt: Runtime, request_id: str, owner: str, claimed: bool, now: datetime,
                 lease: timedelta) -> _MergeClaim:
    """The merge's lease (taken here, or already ours when `claimed`) and what it builds the bundle from."""
    with rt.engine.begin() as conn:
        req = lock_request(conn, request_id, lock=not claimed)
        if req is None:
            raise NotFoundError(f"unknown request {request_id}")
        if req.status != RequestStatus.MERGING:
            return _MergeClaim(None, [])  # not ready, or merged already by an earlier delivery
        dead: list[str] = []
        if claimed:
            if req.lease_owner != owner:  # taken over meanwhile (our lease lapsed): the other merge goes on
                log.warning("request.merge_superseded", request_id=request_id)
                return _MergeClaim(None, [])
        elif lease_is_live(req, now):
            log.info("request.merge_busy", request_id=request_id)
            return _MergeClaim(None, [])  # another process is merging it right now
        else:
            update_request(conn, request_id, lease_until=now + lease, lease_owner=owner)
            if req.lease_owner is not None:  # a merge whose lease lapsed: it may have stored its bundle and died
                log.warning("request.merge_taken_over", request_id=request_id)
                add_audit(conn, "request.merge_taken_over", "worker", request_id, req.subject_hash,
                          dead_owner=req.lease_owner)
                # Every dead merge's, not only the last one's: a chain of them each left a bundle of its own.
                dead = [d["dead_owner"] for d in audit_details(conn, request_id, "request.merge_taken_over",
                                                                since_retry=False) if d.get("dead_owner")]
                attempts = 1 + len(audit_details(conn, request_id, "request.merge_taken_over"))
                if attempts > rt.settings.worker.max_attempts:  # it stops its worker every time: not for ever
                    return _MergeClaim(None, dead, attempts)
        return _MergeClaim(merge_inputs(rt, conn, req), dead)


def _merge(rt: Runtime, request_id: str, owner: str, progress: Callable[[str, str, int], None] | None,
           claimed: bool = False, inputs: MergeInputs | None = None) -> BuiltBundle | None:
    now, lease = _now(rt), _lease(rt)
    dead: list[str] = []
    if inputs is None:
        inputs, dead, gave_up = _claim_merge(rt, request_id, owner, claimed, now, lease)
        if gave_up:
            _abandon_merge(rt, request_id, owner, gave_up, dead)
            return None
    if inputs is None:
        return None
    request_type, lang, header, parts = inputs.request_type, inputs.lang, inputs.header, inputs.parts
    failed, locate_failed = inputs.failed, inputs.locate_failed
    try:  # made once per process, request type and language: it depends on the data map alone
        view = rt.memoized(("bundle_view", request_type, lang),
                           lambda: bundle_view(rt.data_map, rt.policies(), request_type, lang))
    except (DataMapError, ConnectorError):  # the bundle still says what failed; it only lacks categories
        view = bundle_view(rt.data_map, {}, request_type, lang)
    store = archive_store(rt.settings, rt.env)
    keeper = LeaseKeeper(rt, request_id, lease, owner=owner)
    try:
        with store.writer(bundle_key(request_id, owner), size_hint=staged_size(rt.staging, request_id, parts)) as out:
            built = build_bundle(out, header, parts, rt.staging, view, progress,
                                 signing_key=rt.settings.manifest_key or None)
    finally:
        keeper.stop()
    built.uri = out.uri
    single = None if inputs.reported else rt.autocommit  # PostgreSQL, nobody to report to: one statement
    with single.connect() if single is not None else rt.engine.begin() as conn:
        ended = _record_bundle(rt, conn, request_id, owner, built, failed, locate_failed,
                               one_statement=single is not None)
    if ended is None:  # another merge took over after our lease lapsed; its bundle is (or will be) the one recorded
        log.warning("request.merge_superseded", request_id=request_id)
        try:
            store.delete_uri(built.uri)
        except Exception as exc:  # an orphan object, named in the log; the recorded bundle is untouched
            log.warning("request.orphan_bundle", request_id=request_id, error=one_line(exc))
        return None
    # A merge killed between storing its bundle and recording it left a whole copy of the person's data that no
    # ledger row names (bundle expiry would never find it): remove each. One still running finds itself superseded
    # and removes its own.
    _delete_bundles(store, request_id, dead)
    rt.staging.discard(request_id)
    log.info("request.completed", request_id=request_id, status=ended.status, records=sum(built.counts.values()),
             bundle_size=built.size)
    run_completion_hooks(rt, ended)
    return built


_ENDED = ("id", "type", "status", "source", "ticket_ref", "callback_url", "subject_hash")


def _record_bundle(rt: Runtime, conn: sa.Connection, request_id: str, owner: str, built: BuiltBundle,
                   failed: list[AnyRow], locate_failed: dict[str, str], one_statement: bool = False) -> Ended | None:
    """The request is complete: its outcome and the bundle stored for it (URI, SHA-256, size, expiry), its merge
    lease given up; None, and nothing written, when the merge is no longer `owner`'s (taken over after its lease
    lapsed). `one_statement` (PostgreSQL, on an autocommit connection, nobody to report to): the outcome and its
    audit event written by one statement."""
    status = RequestStatus.COMPLETED_WITH_ERRORS if failed or locate_failed else RequestStatus.COMPLETED
    error = "; ".join([*(f"{system} locate: {error}" for system, error in locate_failed.items()),
                       *(f"{t.system} {t.action}: {t.error}" for t in failed)])[:2000] or None
    completed = _now(rt)
    expires = completed + timedelta(days=rt.settings.archive.retention_days)
    outcome = {"status": status, "error": error, "completed_at": completed, "bundle_path": built.uri,
               "bundle_sha256": built.sha256, "bundle_size": built.size, "bundle_expires_at": expires,
               "bundle_deleted_at": None, "open_key": None, "lease_until": None, "lease_owner": None}
    audited = {"status": status, "bundle_sha256": built.sha256, "bundle_size": built.size,
               "bundle_expires_at": expires.isoformat(), "records": sum(built.counts.values())}
    if one_statement:
        req = complete_with_audit(conn, request_id, owner, _ENDED, utcnow(), "request.completed", "worker", audited,
                                  **outcome)
        return None if req is None else Ended.of(req)
    req = move_request(conn, request_id, RequestStatus.MERGING, owner, _ENDED, **outcome)
    if req is None:
        return None
    add_audit(conn, "request.completed", "worker", request_id, req.subject_hash, **audited)
    ended = Ended.of(req)  # the row as the UPDATE left it
    report_ended(conn, rt, ended, "request.finished")
    return ended


def merge_failed(rt: Runtime, request_id: str, error: str) -> bool:
    """A merge failed for a reason retrying will not mend (a bug, a value the bundle cannot hold): audited; after
    worker.max_attempts such failures the request is failed, so the sweeper stops re-waking it. True if failed."""
    with rt.sessions.begin() as s:
        req = s.get(Request, request_id, with_for_update=True)
        if req is None or req.status != RequestStatus.MERGING:
            return False
        audit(s, "request.merge_failed", "worker", req, error=error[:500])
        s.flush()
        failures = len(audit_details(s.connection(), request_id, "request.merge_failed"))  # since the last retry
        if failures < rt.settings.worker.max_attempts:
            return False
        ended = _fail_merging(s, rt, req, f"the bundle could not be built after {failures} attempts: {error}", error)
    rt.staging.discard(request_id)  # the request is closed: staged personal data has no further use
    log.error("request.failed", request_id=request_id, error=error)
    run_completion_hooks(rt, ended)
    return True


def _abandon_merge(rt: Runtime, request_id: str, owner: str, attempts: int, dead: list[str]) -> None:
    """Fail a request whose merge was taken over once too often (each attempt stopped its worker: a bundle too
    big for its memory ...), under the lease the last takeover took; remove what the dead merges may have stored."""
    why = f"the bundle could not be built after {attempts} attempts: {STOPPED_EACH_TIME}"
    with rt.sessions.begin() as s:
        req = s.get(Request, request_id, with_for_update=True)
        if req is None or req.status != RequestStatus.MERGING or req.lease_owner != owner:
            return  # moved on meanwhile (an operator closed it)
        ended = _fail_merging(s, rt, req, why, why)
    _delete_bundles(archive_store(rt.settings, rt.env), request_id, dead)
    rt.staging.discard(request_id)
    log.error("request.failed", request_id=request_id, error=why)
    run_completion_hooks(rt, ended)


def _fail_merging(s: Session, rt: Runtime, req: Request, error: str, audited: str) -> Ended:
    """A merging request failed, audited and reported (in the caller's transaction)."""
    req.status, req.error = RequestStatus.FAILED, error[:2000]
    req.completed_at, req.open_key = _now(rt), None
    req.lease_until = req.lease_owner = None
    audit(s, "request.failed", "worker", req, error=audited[:500])
    report(s, rt, req, "request.finished")
    return Ended.of(req)


def _delete_bundles(store: ArchiveStore, request_id: str, owners: list[str]) -> None:
    """Remove the bundle each of these merges may have stored (under its own key) before it died; none is fine."""
    for dead in dict.fromkeys(owners):
        try:
            store.delete_uri(store.uri_for(bundle_key(request_id, dead)))
        except Exception as exc:  # an orphan object, named in the log; the recorded bundle is untouched
            log.warning("request.orphan_bundle", request_id=request_id, error=one_line(exc))


def ended_of(rt: Runtime, request: Ended | str) -> Ended:
    """A request as the completion hooks are told of it (given its id: read from the ledger)."""
    if isinstance(request, Ended):
        return request
    with rt.sessions() as s:
        req = s.get(Request, request)
        if req is None:
            raise NotFoundError(f"unknown request {request}")
        return Ended.of(req)


def run_completion_hooks(rt: Runtime, request: Ended | str) -> None:
    """The completion hooks, told of a request that ended (or given its id: read from the ledger first)."""
    ended = ended_of(rt, request)
    for hook in rt.completion_hooks:
        name = getattr(hook, "__qualname__", repr(hook))
        try:
            hook(rt, ended)
        except Exception as exc:
            log.exception("request.hook_failed", request_id=ended.id, hook=name)
            with rt.sessions.begin() as s:
                req = s.get(Request, ended.id)
                audit(s, "request.hook_failed", "worker", req, hook=name,
                      error=f"{type(exc).__name__}: {redact(str(exc))[:300]}")


# -- sweeper ---------------------------------------------------------------------------------

def sweep(rt: Runtime, wake: Wakeups, stale_after: timedelta | None = None) -> dict[str, int]:
    """Re-wake work whose message was lost (broker restart, worker killed). Safe to run anywhere, any time.

    Live work is never restarted: a running task, a discovery and a merge each hold a lease their process renews,
    and only a lapsed lease (the process died or hangs) is handed to another worker, which claims it."""
    now = _now(rt)
    stale = now - (stale_after or timedelta(seconds=max(30.0, rt.settings.worker.sweep_interval_seconds)))
    counts = {"expired_leases": 0, "pending_tasks": 0, "discover": 0, "merge": 0}
    with rt.sessions.begin() as s:
        # Tasks a denial or cancellation raced with (put back for later, or their worker died): never run.
        closed = sa.exists().where(Request.id == Task.request_id, Request.status.in_(CLOSED_BY_OPERATOR))
        s.execute(sa.update(Task).where(closed, sa.or_(
            Task.status.in_([TaskStatus.PENDING, TaskStatus.WAITING]),
            sa.and_(Task.status == TaskStatus.RUNNING, Task.lease_until < now)))
            .values(status=TaskStatus.CANCELLED, retry_at=None, lease_until=None, updated_at=now,
                    error="request closed by an operator; not run"), execution_options={"synchronize_session": False})
        # A system asked to wait and the time has come: pending again (the claim takes it), woken below.
        waiting_due = list(s.scalars(sa.select(Task.id).where(Task.status == TaskStatus.WAITING,
                                                               Task.retry_at <= now)))
        if waiting_due:
            s.execute(sa.update(Task).where(Task.id.in_(waiting_due), Task.status == TaskStatus.WAITING)
                      .values(status=TaskStatus.PENDING, retry_at=None, updated_at=now))
        expired = list(s.scalars(sa.select(Task.id).where(Task.status == TaskStatus.RUNNING,
                                                           Task.lease_until < now)))
        if expired:
            s.execute(sa.update(Task).where(Task.id.in_(expired), Task.status == TaskStatus.RUNNING,
                                            Task.lease_until < now)
                      .values(status=TaskStatus.PENDING, lease_until=None, updated_at=now,
                              error="worker stopped before finishing; retried"))
        pending = list(s.scalars(sa.select(Task.id).where(Task.status == TaskStatus.PENDING,
                                                           Task.updated_at < stale)))
        # Received but never claimed (a lost wake-up), or discovering under a lapsed lease.
        to_discover = list(s.scalars(sa.select(Request.id).where(sa.or_(
            sa.and_(Request.status == RequestStatus.RECEIVED, Request.updated_at < stale),
            sa.and_(Request.status == RequestStatus.DISCOVERING, _lapsed(now, stale))))))
        merging = list(s.scalars(sa.select(Request.id).where(Request.status == RequestStatus.MERGING,
                                                              _lapsed(now, stale))))
        # A lost "last task done" wake-up: all terminal but the request never moved on. Locked and read afresh: a
        # finisher holding the row may move it on (and a merge complete it) meanwhile, and an unlocked, stale copy
        # written back here would put a completed request back to merging (the soak benchmark: 67 of 2,200 failed).
        running = s.scalars(sa.select(Request).where(Request.status.in_(
            [RequestStatus.RUNNING, RequestStatus.AWAITING_MANUAL]), Request.updated_at < stale)
            .with_for_update(skip_locked=True).execution_options(populate_existing=True)).all()
        for req in running:
            moved = next_status(s.connection(), req.id, req.status)
            if moved is not None:
                req.status = moved
            if moved == RequestStatus.MERGING:
                merging.append(req.id)
        if to_discover:  # re-woken once per stale interval; the claim decides who discovers
            s.execute(sa.update(Request).where(Request.id.in_(to_discover), Request.status == RequestStatus.RECEIVED)
                      .values(updated_at=now))
    for task_id in expired + pending + waiting_due:
        wake.execute(task_id)
    for request_id in to_discover:
        wake.discover(request_id)
    for request_id in merging:
        wake.merge(request_id)
    counts.update(expired_leases=len(expired), pending_tasks=len(pending) + len(waiting_due),  # waits over count
                  discover=len(to_discover), merge=len(merging))
    if any(counts.values()):
        log.info("sweep", **counts)
    return counts


def _lapsed(now: datetime, stale: datetime) -> sa.ColumnElement[bool]:
    """A request phase nobody holds: its lease ran out, or (a wake-up not yet taken) none was written for a while.
    A discovery or merge taken over from a dead worker starts again from what the ledger holds (it wrote nothing)."""
    return sa.or_(Request.lease_until < now, sa.and_(Request.lease_until.is_(None), Request.updated_at < stale))

