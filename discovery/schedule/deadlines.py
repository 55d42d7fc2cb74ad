"""Deadlines: one month to answer, extendable once or more by at most two further months (Art. 12(3)).

The person must be told of an extension, with the reasons, within the first month, so an
extension is refused once the original deadline has passed.
"""

from __future__ import annotations

import calendar
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa

from discovery.engine.ledger import OPEN_STATUSES, Request
from discovery.engine.pipeline import InvalidInput, NotFoundError, audit, report, send_reports
from discovery.engine.runtime import Runtime

MAX_EXTENSION_MONTHS = 2
DUE_SOON_DAYS = 7


def add_months(at: datetime, months: int) -> datetime:
    """Same day `months` later, clamped to the month's end (31 Jan + 1 month = 28/29 Feb)."""
    month0 = at.month - 1 + months
    year, month = at.year + month0 // 12, month0 % 12 + 1
    return at.replace(year=year, month=month, day=min(at.day, calendar.monthrange(year, month)[1]))


def days_left(due_at: datetime, now: datetime) -> int:
    """Whole days until the deadline; negative when late."""
    return (due_at - now).days


@dataclass(frozen=True)
class Extension:
    request_id: str
    due_at: datetime
    original_due_at: datetime
    latest_possible: datetime


def extend(rt: Runtime, request_id: str, days: int, reason: str, actor: str) -> Extension:
    """Move an open request's deadline by `days`, recording why; the total stays within two months."""
    reason = reason.strip()
    if not reason:
        raise InvalidInput("a reason for the extension is required (Art. 12(3): the person is told why)")
    if days < 1:
        raise InvalidInput("an extension is at least one day")
    now = rt.clock()
    with rt.sessions.begin() as s:
        req = s.get(Request, request_id, with_for_update=True)
        if req is None:
            raise NotFoundError(f"unknown request {request_id}")
        if req.status not in OPEN_STATUSES:
            raise InvalidInput(f"request {request_id} is {req.status}; only open requests can be extended")
        original = req.original_due_at or req.due_at
        if now > original:
            raise InvalidInput(f"the original deadline ({original:%Y-%m-%d}) has passed; an extension must be "
                               "decided and told to the person within the first month")
        latest = add_months(original, MAX_EXTENSION_MONTHS)
        new_due = req.due_at + timedelta(days=days)
        if new_due > latest:
            room = max(0, (latest - req.due_at).days)
            raise InvalidInput(f"the deadline may move to {latest:%Y-%m-%d} at the latest (two months past "
                               f"{original:%Y-%m-%d}); at most {room} more day(s)")
        req.original_due_at = original
        req.due_at = new_due
        req.extension_reason = reason if not req.extension_reason else f"{req.extension_reason}\n{reason}"
        req.updated_at = now
        audit(s, "request.extended", actor, req, days=days, due_at=new_due.isoformat(), reason=reason[:500])
        # Art. 12(3): the person is told of the extension and why; the ticket's agent hears it here
        report(s, rt, req, "request.extended", days=days, reason=reason[:500])
    send_reports(rt, request_id)
    return Extension(request_id, new_due, original, latest)


@dataclass(frozen=True)
class Deadline:
    id: str
    type: str
    status: str
    ticket: str | None
    received_at: datetime
    due_at: datetime
    days_left: int
    overdue: bool
    extended: bool

    def to_dict(self) -> dict[str, object]:
        return {"id": self.id, "type": self.type, "status": self.status, "ticket": self.ticket,
                "received_at": self.received_at.isoformat(), "due_at": self.due_at.isoformat(),
                "days_left": self.days_left, "overdue": self.overdue, "extended": self.extended}


def due_soon(rt: Runtime, within_days: int = DUE_SOON_DAYS, limit: int = 1000) -> list[Deadline]:
    """Open requests that are late or due within `within_days`, most urgent first."""
    now = rt.clock()
    horizon = now + timedelta(days=within_days)
    with rt.sessions() as s:
        rows = s.scalars(sa.select(Request).where(Request.status.in_(list(OPEN_STATUSES)),
                                                  Request.due_at <= horizon)
                         .order_by(Request.due_at, Request.id).limit(limit)).all()
        return [deadline_of(r, now) for r in rows]


def deadline_of(req: Request, now: datetime) -> Deadline:
    return Deadline(req.id, req.type, req.status, req.ticket_ref, req.received_at, req.due_at,
                    days_left(req.due_at, now), req.due_at < now, req.original_due_at is not None)
