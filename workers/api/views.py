"""What several route families share: a request loaded by id, and ledger rows as response bodies."""

import re
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from fastapi.responses import JSONResponse

from discovery.engine import lifecycle, pipeline
from discovery.engine.ledger import OPEN_STATUSES, RequestStatus, Task
from discovery.engine.ledger import Request as LedgerRequest
from discovery.engine.runtime import Runtime
from discovery.schedule import deadlines
from workers.api.errors import fail

_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def load_request(rt: Runtime, request_id: str) -> tuple[LedgerRequest, list[Task]]:
    if not _UUID.match(request_id):  # not an id dsar made: no need to ask the database
        fail(404, "not_found", "unknown request")
    with rt.sessions() as s:
        req = s.get(LedgerRequest, request_id)
        if req is None:
            fail(404, "not_found", f"unknown request {request_id}")
        return req, list(req.tasks)


def summary(req: LedgerRequest, now: datetime) -> dict[str, Any]:
    is_open = req.status in OPEN_STATUSES
    return {"id": req.id, "type": req.type, "status": req.status, "source": req.source, "ticket": req.ticket_ref,
            "received_at": req.received_at, "due_at": req.due_at,
            "days_left": deadlines.days_left(req.due_at, now) if is_open else None,
            "overdue": is_open and req.due_at < now, "original_due_at": req.original_due_at,
            "extension_reason": req.extension_reason, "completed_at": req.completed_at, "language": req.language}


def view(req: LedgerRequest, tasks: list[Task], now: datetime,
         identities: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
    def records(t: Task) -> int | None:
        if t.action != "export" or not t.result:
            return None
        return sum(e["records"] for e in t.result.get("entities", {}).values())

    return {**summary(req, now), "subject": lifecycle.mask_email(req.subject_email),
            "subject_email": req.subject_email,
            "awaiting_verification": req.status == RequestStatus.AWAITING_VERIFICATION,
            "verified_at": req.verified_at, "verified_by": req.verified_by,
            "bundle_ready": bool(req.bundle_path) and req.bundle_deleted_at is None,
            "bundle_sha256": req.bundle_sha256, "bundle_size": req.bundle_size, "error": req.error,
            "identifiers": list(identities),
            "tasks": [{"system": t.system, "action": t.action, "status": t.status, "attempts": t.attempts,
                       "entities": t.entities, "error": t.error, "records": records(t),
                       "changed": (t.result or {}).get("changed"),
                       "manual_steps": (t.result or {}).get("manual_steps")} for t in tasks]}


def submitted(result: pipeline.Submitted) -> JSONResponse:
    """202 for a new request, 200 with the open one's id: the API and the ticket webhooks answer alike."""
    req = result.request
    body = {"id": req.id, "type": req.type, "status": req.status, "created": result.created,
            "due_at": req.due_at.isoformat()}
    return JSONResponse(body, status_code=202 if result.created else 200)
