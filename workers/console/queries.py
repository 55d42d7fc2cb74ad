"""What the console's pages read from the ledger and the data map: few queries per page, nothing changed here."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from discovery.engine import lifecycle, pipeline
from discovery.engine.ledger import OPEN_STATUSES, ScheduledAction, SystemHit, Task
from discovery.engine.ledger import Request as LedgerRequest
from discovery.engine.runtime import Runtime
from discovery.i18n.languages import SOURCE, language
from discovery.schedule import deadlines, scheduler


@dataclass
class Detail:
    """One request as its page shows it."""

    req: LedgerRequest
    tasks: list[Task]
    hits: list[SystemHit]
    identities: list[dict[str, Any]]
    holds: list[ScheduledAction]  # hold ends (and any action) this request scheduled
    now: datetime
    systems: list[str] = field(default_factory=list)  # in the order of the plan

    @property
    def is_open(self) -> bool:
        return self.req.status in OPEN_STATUSES

    @property
    def days_left(self) -> int:
        return deadlines.days_left(self.req.due_at, self.now)

    @property
    def overdue(self) -> bool:
        return self.is_open and self.req.due_at < self.now

    def tasks_of(self, system: str) -> list[Task]:
        return [t for t in self.tasks if t.system == system]

    def hit(self, system: str) -> SystemHit | None:
        return next((h for h in self.hits if h.system == system), None)

    @property
    def manual(self) -> list[Task]:
        return [t for t in self.tasks if t.status == "awaiting_manual"]

    @property
    def receipts(self) -> list[Task]:
        return [t for t in self.tasks if t.action != "export" and t.result and "changed" in t.result]

    @property
    def held(self) -> list[dict[str, Any]]:
        return [{**h, "system": t.system} for t in self.tasks for h in (t.result or {}).get("held") or []]


def detail(rt: Runtime, request_id: str) -> Detail | None:
    with rt.sessions() as s:
        req = s.get(LedgerRequest, request_id)
        if req is None:
            return None
        tasks = list(req.tasks)
        hits = list(s.scalars(sa.select(SystemHit).where(SystemHit.request_id == request_id)
                              .order_by(SystemHit.system)))
        holds = list(s.scalars(sa.select(ScheduledAction).where(ScheduledAction.source_request_id == request_id)
                               .order_by(ScheduledAction.due_at)))
    systems = list(dict.fromkeys([*(t.system for t in tasks), *(h.system for h in hits)]))
    return Detail(req, tasks, hits, pipeline.identifiers(rt, request_id), holds, rt.clock(), systems)


def scheduled(rt: Runtime, include_closed: bool) -> list[ScheduledAction]:
    return scheduler.list_actions(rt, include_closed=include_closed)


def text(value: Any) -> str:
    """A data-map text (a string or one per language) in the source language."""
    return language(SOURCE).text(value) if isinstance(value, dict) else str(value or "")


def datamap(rt: Runtime) -> list[dict[str, Any]]:
    """Per system: what it holds, why, on what basis, for how long, and who processes it for us."""
    out = []
    for system in rt.data_map.systems.values():
        info = system.info
        out.append({
            "name": system.name, "kind": info.kind, "enabled": info.enabled, "title": text(info.title),
            "holds": text(info.holds), "purpose": text(info.purpose), "legal_basis": text(info.legal_basis),
            "retention": text(info.retention), "location": text(info.location), "source": text(info.source),
            "processors": [text(p) for p in info.processors],
            "data_categories": [text(c) for c in info.data_categories],
            "recipients": [text(r) for r in info.recipients],
            "transfers": [f"{text(t.country)}: {text(t.safeguard)}" for t in info.transfers],
        })
    return out


# -- the open-requests list -----------------------------------------------------------------------------------

_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
PER_PAGE = 50


def is_request_id(value: str) -> bool:
    return bool(_UUID.match(value))


def list_requests(rt: Runtime, *, status: str, type: str | None, overdue: bool, ticket: str | None, sort: str,
                  page: int) -> lifecycle.RequestPage:
    """One page of the list, with the open and overdue totals: lifecycle.list_requests, the very filters and order
    of `dsar requests` and GET /v1/requests (status "all": no status filter). A page past the last (the list
    shrank since the link was made) shows the last one."""
    def one(page_no: int) -> lifecycle.RequestPage:
        return lifecycle.list_requests(rt, status=None if status == "all" else status, type=type, overdue=overdue,
                                       ticket=ticket, sort=sort, page=page_no, per_page=PER_PAGE, totals=True)

    found = one(page)
    return found if found.page <= found.pages else one(found.pages)


# -- the lifecycle (discovery.engine.lifecycle: the same rules as the CLI and the API) ---------------------------

def trail(rt: Runtime, request_id: str) -> list[dict[str, Any]]:
    return lifecycle.audit_trail(rt, request_id)


def next_actions(rt: Runtime, request_id: str) -> list[str]:
    return lifecycle.next_actions(rt, request_id)


def deny(rt: Runtime, request_id: str, reason: str, basis: str, actor: str) -> None:
    lifecycle.deny_request(rt, request_id, reason, basis, actor)


def cancel(rt: Runtime, request_id: str, reason: str, actor: str) -> None:
    lifecycle.cancel_request(rt, request_id, reason, actor)


def retry(rt: Runtime, wake: pipeline.Wakeups, request_id: str, systems: list[str] | None, reason: str,
          actor: str) -> lifecycle.Retried:
    """Retry, then record the operator's reason beside lifecycle's own `request.retried` event."""
    done = lifecycle.retry_request(rt, wake, request_id, systems, actor)
    with rt.sessions.begin() as s:
        pipeline.audit(s, "request.retry_reason", actor, s.get(LedgerRequest, request_id), reason=reason[:500])
    return done
