"""What an operator does with requests day to day: list them, deny, cancel or retry one, read its audit trail
and the next action it waits for. The CLI (`dsar requests|deny|cancel|retry|audit`), the HTTP API and the
dashboard call these, so the rules are the same everywhere.

A wrong state (denying a cancelled request, retrying a completed one) raises `pipeline.StateConflict` (API 409,
CLI exit 8); an unknown id `NotFoundError`; bad input `InvalidInput`. Every action is audited with its actor.

Retry, the rule: the failed tasks run again, and so does every export task (read-only), because the staged
exports were discarded when the request closed; the new bundle so shows what every system holds now. Erasures,
restrictions and lifts that succeeded are not run again: their receipts stay. A system whose search (locate)
failed is searched again first, with every identifier known, in the caller (at most worker.locate_timeout);
identifiers it teaches are kept but not followed into other systems (a new request does that). The request keeps
its id and its deadline.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
import structlog
from sqlalchemy.exc import IntegrityError

from discovery.bundle.archive import store_for_uri
from discovery.engine.discover import discover
from discovery.engine.ledger import (
    OPEN_STATUSES,
    AuditEvent,
    Request,
    RequestStatus,
    RequestType,
    SubjectIdentity,
    SystemHit,
    Task,
    TaskStatus,
)
from discovery.engine.ledger_retention import MARKER
from discovery.engine.ledger_rows import identities_of
from discovery.engine.pipeline import (
    InvalidInput,
    NotFoundError,
    StateConflict,
    Wakeups,
    audit,
    one_line,
    open_key,
    report,
    run_completion_hooks,
)
from discovery.engine.runtime import Ended, Runtime

log = structlog.get_logger(__name__)

DENIAL_BASES = ("unfounded_or_excessive", "identity_not_verified")  # Art. 12(5); Art. 12(6) and 11(2)
FINISHED = (RequestStatus.COMPLETED, RequestStatus.COMPLETED_WITH_ERRORS, RequestStatus.FAILED)
RETRYABLE = (RequestStatus.COMPLETED_WITH_ERRORS, RequestStatus.FAILED)
MAX_PER_PAGE = 500
SORTS = ("due", "-due", "received", "-received")  # by deadline or arrival; "-": latest first
_REASON_MIN, _REASON_MAX = 3, 1000


# -- list ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RequestItem:
    id: str
    type: str
    status: str
    subject_masked: str
    subject: str  # the full e-mail: callers decide whether to show it (an API scope, a CLI flag)
    ticket: str | None
    source: str
    received_at: datetime
    due_at: datetime
    days_left: int | None  # whole days while open; negative when late
    overdue: bool
    extended: bool = False  # the deadline was extended (Art. 12(3))

    def to_dict(self, full_subject: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id, "type": self.type, "status": self.status, "subject": self.subject_masked,
            "ticket": self.ticket, "source": self.source, "received_at": self.received_at.isoformat(),
            "due_at": self.due_at.isoformat(), "days_left": self.days_left, "overdue": self.overdue}
        if full_subject:
            out["subject_email"] = self.subject
        return out


@dataclass(frozen=True)
class RequestPage:
    items: list[RequestItem]
    total: int  # matching requests on every page
    page: int
    per_page: int
    open_total: int | None = None  # with totals=True: open requests in the whole ledger, whatever the filters
    overdue_total: int | None = None  # ... and those of them past their deadline

    @property
    def pages(self) -> int:
        return max(1, -(-self.total // self.per_page))


def mask_email(email: str) -> str:
    """Enough to tell requests apart on a list, not enough to name the person: j***@e***.com."""
    if not email or email == MARKER:
        return MARKER
    local, _, domain = email.rpartition("@")
    if not local:
        return "***"
    name, dot, tld = domain.rpartition(".")
    masked_domain = f"{name[:1]}***{dot}{tld}" if name else f"{tld[:1]}***"
    return f"{local[:1]}***@{masked_domain}"


def mask_value(value: Any) -> str:
    """An identifier shown to someone who may not see the subject: an e-mail as mask_email, anything else its first
    two characters (none when it is short)."""
    text = "" if value is None else str(value)
    if "@" in text:
        return mask_email(text)
    return text[:2] + "***" if len(text) > 4 else "***"


def list_requests(rt: Runtime, *, status: str | None = None, type: str | None = None,
                  overdue: bool = False, ticket: str | None = None, page: int = 1, per_page: int = 50,
                  now: datetime | None = None, due_within_days: int | None = None,
                  offset: int | None = None, sort: str | None = None, totals: bool = False) -> RequestPage:
    """Requests, newest first (`overdue`: open and past due; `due_within_days`: open and due within that many days,
    late ones included; either sorts by deadline, most urgent first). `status` is a request status or `open` (every
    open status); `ticket` matches the ticket reference exactly. `sort` (one of SORTS) overrides the order. Pages
    count from 1; `offset` (the API's older limit/offset paging) overrides the page's. `totals`: also count the open
    and overdue requests of the whole ledger (the console's header). One function for the CLI, the API and the
    console, so a filter means the same in each."""
    if page < 1 or not 1 <= per_page <= MAX_PER_PAGE or (offset is not None and offset < 0):
        raise InvalidInput(f"page starts at 1 and per_page is 1 to {MAX_PER_PAGE}")
    if sort is not None and sort not in SORTS:
        raise InvalidInput(f"unknown sort '{sort}' (one of: {', '.join(SORTS)})")
    now = now or rt.clock()
    q = sa.select(Request)
    if status is not None:
        if status == "open":
            q = q.where(Request.status.in_(list(OPEN_STATUSES)))
        elif status in set(RequestStatus):
            q = q.where(Request.status == status)
        else:
            raise InvalidInput(f"unknown status '{status}' (one of: open, {', '.join(RequestStatus)})")
    if type is not None:
        if type.replace("-", "_") not in set(RequestType):
            raise InvalidInput(f"unknown request type '{type}' (one of: {', '.join(RequestType)})")
        q = q.where(Request.type == type.replace("-", "_"))
    if ticket is not None:
        q = q.where(Request.ticket_ref == ticket)
    if overdue:
        q = q.where(Request.status.in_(list(OPEN_STATUSES)), Request.due_at < now)
    if due_within_days is not None:
        q = q.where(Request.status.in_(list(OPEN_STATUSES)), Request.due_at <= now + timedelta(days=due_within_days))
    by_deadline = overdue or due_within_days is not None
    order = (Request.due_at.asc(),) if by_deadline else (Request.received_at.desc(),)
    if sort is not None:
        column = Request.due_at if sort.lstrip("-") == "due" else Request.received_at
        order = (column.desc() if sort.startswith("-") else column.asc(),)
    with rt.sessions() as s:
        total = s.scalar(sa.select(sa.func.count()).select_from(q.subquery())) or 0
        start = (page - 1) * per_page if offset is None else offset
        rows = s.scalars(q.order_by(*order, Request.id).limit(per_page).offset(start)).all()
        items = [item_of(r, now) for r in rows]
        open_total = overdue_total = None
        if totals:
            open_total, overdue_total = s.execute(
                sa.select(sa.func.count(), sa.func.count().filter(Request.due_at < now))
                .where(Request.status.in_(list(OPEN_STATUSES)))).one()
    return RequestPage(items, total, page, per_page, open_total, overdue_total)


def item_of(req: Request, now: datetime) -> RequestItem:
    is_open = req.status in OPEN_STATUSES
    return RequestItem(req.id, req.type, req.status, mask_email(req.subject_email), req.subject_email, req.ticket_ref,
                       req.source, req.received_at, req.due_at, (req.due_at - now).days if is_open else None,
                       is_open and req.due_at < now, req.original_due_at is not None)


# -- deny and cancel -------------------------------------------------------------------------

def _reason(reason: str) -> str:
    text = (reason or "").strip()
    if len(text) < _REASON_MIN or "\x00" in text:
        raise InvalidInput(f"a reason of at least {_REASON_MIN} characters is required (it is recorded and "
                           "reported back to the ticket)")
    return text[:_REASON_MAX]


def _actor(actor: str) -> str:
    if not (actor or "").strip():
        raise InvalidInput("who acts is required (an API token's name, or the OS user)")
    return actor.strip()[:128]


def deny_request(rt: Runtime, request_id: str, reason: str, basis: str, actor: str) -> Request:
    """Refuse a request: Art. 12(5) manifestly unfounded or excessive, or the identity could not be verified."""
    if basis not in DENIAL_BASES:
        raise InvalidInput(f"basis must be one of: {', '.join(DENIAL_BASES)}")
    return _close(rt, request_id, RequestStatus.DENIED, _reason(reason), basis, _actor(actor))


def cancel_request(rt: Runtime, request_id: str, reason: str, actor: str) -> Request:
    """The person withdrew: nothing more runs; work already done stays in the receipts."""
    return _close(rt, request_id, RequestStatus.CANCELLED, _reason(reason), None, _actor(actor))


def _close(rt: Runtime, request_id: str, status: RequestStatus, reason: str, basis: str | None,
           actor: str) -> Request:
    verb = "denied" if status == RequestStatus.DENIED else "cancelled"
    now = rt.clock()
    with rt.sessions.begin() as s:
        req = s.get(Request, request_id, with_for_update=True)
        if req is None:
            raise NotFoundError(f"unknown request {request_id}")
        if req.status not in OPEN_STATUSES:
            raise StateConflict(f"request {request_id} is {req.status}; only an open request can be {verb}")
        # Tasks not started stop here. A running one finishes and records what it did (its worker is mid-call:
        # the change may have happened); the request stays closed whatever it reports.
        stopped = s.execute(sa.update(Task).where(
            Task.request_id == request_id,
            Task.status.in_([TaskStatus.PENDING, TaskStatus.WAITING, TaskStatus.AWAITING_MANUAL]))
            .values(status=TaskStatus.CANCELLED, retry_at=None, updated_at=now, finished_at=now,
                    error=f"request {verb}; not run"), execution_options={"synchronize_session": False})
        previous = req.status
        req.status, req.close_reason, req.close_basis = status, reason, basis
        req.completed_at, req.updated_at, req.open_key = now, now, None  # closed: the person may ask again
        req.lease_until = req.lease_owner = None  # a discovery or merge in flight finds it superseded
        audit(s, f"request.{verb}", actor, req, reason=reason, basis=basis, previous_status=previous,
              tasks_stopped=stopped.rowcount)  # type: ignore[attr-defined]
        report(s, rt, req, "request.finished")  # the note and callback commit with the closing
        ended = Ended.of(req)
    rt.staging.discard(request_id)  # nothing will be merged: staged personal data has no further use
    log.info(f"request.{verb}", request_id=request_id, basis=basis)
    run_completion_hooks(rt, ended)  # report back now: the ticket hears it was denied or cancelled, and why
    return _reload(rt, request_id)


def _reload(rt: Runtime, request_id: str) -> Request:
    with rt.sessions() as s:
        req = s.get(Request, request_id)
        assert req is not None
        return req


# -- retry -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Retried:
    request: Request
    tasks: list[dict[str, str]]  # system, action, why (failed | export rebuilt)
    relocated: dict[str, str | None]  # system -> its locate error now (None: searched fine)


def retry_request(rt: Runtime, wake: Wakeups, request_id: str, systems: list[str] | None, actor: str) -> Retried:
    """Run a finished request's failed systems again on the same request and deadline (see the module's rule).
    `systems`: only these of the failed ones (None: all). Exports of every system re-run so the bundle is whole."""
    actor = _actor(actor)
    with rt.sessions() as s:
        req = s.get(Request, request_id)
        if req is None:
            raise NotFoundError(f"unknown request {request_id}")
        if req.status not in RETRYABLE:
            why = "nothing failed" if req.status == RequestStatus.COMPLETED else (
                "it is still open" if req.status in OPEN_STATUSES else "it was closed by an operator")
            raise StateConflict(f"request {request_id} is {req.status}; only a request that completed with "
                                f"errors or failed can be retried ({why})")
        if req.purged_at is not None:
            raise StateConflict(f"request {request_id}'s personal data was purged; submit a new request")
        tasks = list(req.tasks)
        hits = {h.system: h.error for h in s.scalars(sa.select(SystemHit).where(SystemHit.request_id == request_id))}
        planned = req.plan is not None
    failed_systems = sorted({t.system for t in tasks if t.status == TaskStatus.FAILED}
                            | {name for name, error in hits.items() if error})
    chosen = sorted(set(systems)) if systems else failed_systems
    not_failed = [name for name in chosen if name not in failed_systems]
    if not_failed:
        raise InvalidInput(f"nothing failed in {', '.join(not_failed)} "
                           f"(failed: {', '.join(failed_systems) or 'none'})")
    if not planned and systems:
        raise InvalidInput(f"request {request_id} failed before it was planned; retry it without --system")

    relocated = _relocate(rt, request_id, [n for n in chosen if hits.get(n)]) if planned else {}
    now = rt.clock()
    with rt.sessions.begin() as s:
        req = s.get(Request, request_id, with_for_update=True)
        assert req is not None
        if req.status not in RETRYABLE:  # another operator got here first
            raise StateConflict(f"request {request_id} is {req.status} now; it was retried or closed meanwhile")
        rerun = [t for t in s.scalars(sa.select(Task).where(Task.request_id == request_id).order_by(Task.id))
                 if (t.status == TaskStatus.FAILED and t.system in chosen)
                 or (t.action == "export" and t.status in (TaskStatus.DONE, TaskStatus.FAILED))]
        listed = [{"system": t.system, "action": t.action,
                   "why": "failed" if t.status == TaskStatus.FAILED and t.system in chosen else "export"}
                  for t in rerun]
        for t in rerun:
            t.status, t.error, t.result, t.attempts, t.waits = TaskStatus.PENDING, None, None, 0, 0
            t.retrying_since = t.retry_at = t.lease_until = t.started_at = t.finished_at = None
            t.updated_at = now
        old_bundle = req.bundle_path if req.bundle_deleted_at is None else None
        previous = req.status
        if not planned:  # discovery itself failed: it runs again from the start
            req.status = RequestStatus.RECEIVED
        else:
            req.status = RequestStatus.RUNNING if rerun else RequestStatus.MERGING
        req.open_key = open_key(RequestType(req.type), req.subject_hash,
                                list(req.systems) if req.systems is not None else None)
        req.error = req.completed_at = None
        req.bundle_path = req.bundle_sha256 = req.bundle_size = req.bundle_expires_at = None
        req.bundle_deleted_at = None
        req.lease_until = req.lease_owner = None
        req.updated_at = now
        audit(s, "request.retried", actor, req, previous_status=previous, systems=chosen,
              tasks=[f"{t.system} {t.action}" for t in rerun], relocated=relocated or None,
              old_bundle_deleted=bool(old_bundle))
        rtype = req.type
        try:
            s.flush()
        except IntegrityError:  # open_key: the person has another open request of this type meanwhile
            raise StateConflict(f"request {request_id} cannot be reopened: the same person has another open "
                                f"{rtype} request; see `dsar requests --type {rtype} --status open`") from None
        task_ids = [t.id for t in rerun]
        status = req.status
    if old_bundle:  # the new merge writes a new bundle; the old one would be an orphan in the store
        try:
            store_for_uri(rt.settings, old_bundle, rt.env).delete_uri(old_bundle)
        except Exception as exc:
            log.warning("request.old_bundle_not_deleted", request_id=request_id, error=one_line(exc))
    log.info("request.retried", request_id=request_id, tasks=len(task_ids), relocated=len(relocated))
    if status == RequestStatus.RECEIVED:
        wake.discover(request_id)
    elif task_ids:
        for task_id in task_ids:
            wake.execute(task_id)
    else:
        wake.merge(request_id)
    return Retried(_reload(rt, request_id), listed, relocated)


def _relocate(rt: Runtime, request_id: str, names: list[str]) -> dict[str, str | None]:
    """Search the systems whose locate failed again, with every identifier known; record what they answer now."""
    if not names:
        return {}
    conns = {name: conn for name, conn in rt.connectors().items() if name in names}
    missing = sorted(set(names) - set(conns))
    if missing:
        raise InvalidInput(f"system(s) no longer enabled in the data map: {', '.join(missing)}")
    with rt.sessions() as s:
        seed = identities_of(s.connection(), request_id)
        next_round = (s.scalar(sa.select(sa.func.max(SubjectIdentity.round))
                               .where(SubjectIdentity.request_id == request_id)) or 0) + 1
    found = discover(conns, seed, 1, rt.settings.worker.locate_timeout)
    with rt.sessions.begin() as s:
        have = {(i.type, i.value) for i in identities_of(s.connection(), request_id)}
        for ident in found.identities:
            if (ident.type.value, ident.value) not in have and ident.source in conns:
                s.add(SubjectIdentity(request_id=request_id, type=ident.type.value, value=ident.value,
                                      source=ident.source, via=ident.via or None,
                                      via_note=ident.via_note.to_dict() if ident.via_note else None,
                                      round=next_round))
        for name in names:
            hit = s.scalars(sa.select(SystemHit).where(SystemHit.request_id == request_id,
                                                       SystemHit.system == name)).one()
            hits = found.hits.get(name)
            hit.found, hit.error = bool(hits and hits.found), found.errors.get(name)
            hit.counts = dict(hits.counts) if hits else {}
            hit.skipped = dict(hits.skipped) if hits and hits.skipped else None
    return {name: found.errors.get(name) for name in names}


# -- audit trail and next actions --------------------------------------------------------------

def audit_trail(rt: Runtime, request_id: str) -> list[dict[str, Any]]:
    """Who did what, when, with what note: the request's audit events, oldest first (no personal data in them)."""
    with rt.sessions() as s:
        if s.get(Request, request_id) is None:
            raise NotFoundError(f"unknown request {request_id}")
        events = s.scalars(sa.select(AuditEvent).where(AuditEvent.request_id == request_id).order_by(AuditEvent.id))
        return [{"at": e.at.isoformat(), "event": e.event, "actor": e.actor,
                 "note": e.details.get("note") or e.details.get("reason"),
                 "details": {k: v for k, v in e.details.items() if v is not None}} for e in events]


def confirmations(rt: Runtime, request_id: str) -> list[dict[str, Any]]:
    """Manual steps a person confirmed (`dsar confirm`): system, action, by whom, when, the note."""
    return [{"system": e["details"].get("system"), "action": e["details"].get("action"), "by": e["actor"],
             "at": e["at"], "note": e["note"]}
            for e in audit_trail(rt, request_id) if e["event"] == f"task.{TaskStatus.DONE}" and e["actor"] != "worker"]


def next_actions(rt: Runtime, request_id: str) -> list[str]:
    """What the request waits for, as the commands to run (`dsar confirm ...`); empty when nothing is left to do."""
    now = rt.clock()
    with rt.sessions() as s:
        req = s.get(Request, request_id)
        if req is None:
            raise NotFoundError(f"unknown request {request_id}")
        tasks = list(req.tasks)
        locate_failed = sorted(s.scalars(sa.select(SystemHit.system).where(SystemHit.request_id == request_id,
                                                                           SystemHit.error.is_not(None))))
    rid = req.id
    out: list[str] = []
    if req.status == RequestStatus.AWAITING_VERIFICATION:
        out.append(f'dsar identity-verified {rid} --note "<how the identity was checked>"')
        out.append(f'dsar deny {rid} --basis identity-not-verified --reason "<why>"')
    for system in sorted({t.system for t in tasks if t.status == TaskStatus.AWAITING_MANUAL}):
        out.append(f'dsar confirm {rid} --system {system} --note "<what was done>"')
    for t in tasks:
        if t.status == TaskStatus.WAITING and t.retry_at:
            out.append(f"wait: {t.system} {t.action} runs again at {t.retry_at:%Y-%m-%d %H:%M} UTC "
                       "(vendor rate limit)")
    if req.status in RETRYABLE and req.purged_at is None:
        failed = sorted({t.system for t in tasks if t.status == TaskStatus.FAILED} | set(locate_failed))
        out.extend(f"dsar retry {rid} --system {system}" for system in failed)
        if len(failed) != 1:
            out.append(f"dsar retry {rid}")
    if req.status in (RequestStatus.COMPLETED, RequestStatus.COMPLETED_WITH_ERRORS) and req.bundle_path \
            and req.bundle_deleted_at is None:
        out.append(f"dsar download {rid} -o {rid}.zip")
    if req.status in OPEN_STATUSES:
        if req.due_at < now:
            out.append(f"overdue since {req.due_at:%Y-%m-%d}")
        elif (req.due_at - now).days < 7 and now <= (req.original_due_at or req.due_at):
            out.append(f'dsar extend {rid} --days N --reason "<why>"  (Art. 12(3), before the first month ends)')
    return out
