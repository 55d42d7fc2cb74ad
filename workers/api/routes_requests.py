"""Request routes: submit, list and read requests; verify identity, confirm manual steps, extend deadlines."""

from collections.abc import Callable
from datetime import timedelta
from typing import Annotated, Any

import sqlalchemy as sa
from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse

from discovery.engine import callbacks, pipeline
from discovery.engine.ledger import OPEN_STATUSES
from discovery.engine.ledger import Request as LedgerRequest
from discovery.schedule import deadlines
from workers.api.deps import RT, Admin, Read, Submit, Wake
from workers.api.errors import ApiError, fail
from workers.api.schemas import (
    ERRORS,
    ConfirmBody,
    Confirmed,
    ExtendBody,
    Extended,
    PlanBody,
    PlanView,
    RequestList,
    RequestSummary,
    RequestView,
    StatusFilter,
    SubmitBody,
    Submitted,
    VerifyBody,
)
from workers.api.views import load_request, submitted, summary, view

router = APIRouter()


def _conflict(fn: Callable[[], Any]) -> Any:
    """State errors of the pipeline (not awaiting verification, no manual step) are conflicts."""
    try:
        return fn()
    except pipeline.InvalidInput as exc:
        fail(409, "conflict", str(exc))


@router.post("/v1/requests", status_code=202, response_model=Submitted, tags=["requests"],
             responses={200: {"model": Submitted, "description": "an open request for the same person and type"},
                        **ERRORS})
def submit(body: SubmitBody, rt: RT, wake: Wake, who: Submit) -> JSONResponse:
    """Submit a request: 202 with its id (200 with the existing id when one is open already); 409 when its ticket
    made a request of another type already (one request per ticket; the error names that request)."""
    callbacks.check_url(rt.settings.api, body.callback_url)  # 422 callback_refused: not in api.callback_allow
    return submitted(pipeline.submit(rt, wake, body.type.value, body.email, body.ticket, actor=f"api:{who.name}",
                                     source="api", callback_url=body.callback_url, systems=body.systems,
                                     confirm_others=body.confirm_others,
                                     language=body.language.value if body.language else None))


@router.post("/v1/plans", response_model=PlanView, tags=["requests"], responses=ERRORS)
def dry_run(body: PlanBody, rt: RT, _who: Submit) -> dict[str, Any]:
    """What a request would do, changing nothing: the identifiers found (with provenance) and the plan.

    409 when an erasure or restriction would change records that also name other people, unless
    `confirm_others` gives a reason.
    """
    found, steps = pipeline.dry_run(rt, body.type.value, body.email, body.systems, body.confirm_others)
    report = pipeline.plan_report(found, steps)
    if report["refused"]:
        raise ApiError(409, "refused", "the plan would change records that also name other people; "
                       "give confirm_others with a reason to go ahead", details=report["refused"])
    return report


@router.get("/v1/requests", response_model=RequestList, tags=["requests"], responses=ERRORS)
def list_requests(rt: RT, _who: Read, status: StatusFilter | None = None,
                  overdue: Annotated[bool | None, Query(description="true: open and past due_at")] = None,
                  due_within_days: Annotated[int | None, Query(ge=0, le=3650, description=(
                      "open requests due within this many days, late ones included"))] = None,
                  limit: Annotated[int, Query(ge=1, le=1000)] = 100,
                  offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0) -> dict[str, Any]:
    now = rt.clock()
    q = sa.select(LedgerRequest)
    if status == StatusFilter.OPEN or overdue is not None or due_within_days is not None:
        q = q.where(LedgerRequest.status.in_(list(OPEN_STATUSES)))
    if status is not None and status != StatusFilter.OPEN:
        q = q.where(LedgerRequest.status == status.value)
    if overdue is not None:
        q = q.where(LedgerRequest.due_at < now if overdue else LedgerRequest.due_at >= now)
    if due_within_days is not None:
        q = q.where(LedgerRequest.due_at <= now + timedelta(days=due_within_days))
    by_deadline = overdue is not None or due_within_days is not None
    order = LedgerRequest.due_at.asc() if by_deadline else LedgerRequest.received_at.desc()
    with rt.sessions() as s:
        items = [summary(r, now) for r in s.scalars(q.order_by(order, LedgerRequest.id).limit(limit).offset(offset))]
    return {"requests": items, "count": len(items), "limit": limit, "offset": offset}


@router.get("/v1/requests/{request_id}", response_model=RequestView, tags=["requests"], responses=ERRORS)
def get_request(request_id: str, rt: RT, _who: Read) -> dict[str, Any]:
    """A request with every task, its deadline and days left."""
    req, tasks = load_request(rt, request_id)
    return view(req, tasks, rt.clock(), pipeline.identifiers(rt, request_id))


@router.post("/v1/requests/{request_id}/confirm", response_model=Confirmed, tags=["requests"], responses=ERRORS)
def confirm(request_id: str, body: ConfirmBody, rt: RT, wake: Wake, who: Admin) -> dict[str, Any]:
    """A person did a system's manual step (e.g. 'Forget' in a vendor UI): its tasks complete, audited."""
    load_request(rt, request_id)
    n = _conflict(lambda: pipeline.confirm_manual(rt, wake, request_id, body.system, body.note, f"api:{who.name}"))
    return {"id": request_id, "confirmed_tasks": n}


@router.post("/v1/requests/{request_id}/verify", response_model=RequestSummary, tags=["requests"],
             responses=ERRORS)
def verify(request_id: str, body: VerifyBody, rt: RT, wake: Wake, who: Admin) -> dict[str, Any]:
    """The requester's right to act for the subject was checked: the held request proceeds (audited)."""
    load_request(rt, request_id)
    req = _conflict(lambda: pipeline.verify_request(rt, wake, request_id, f"api:{who.name}", body.note))
    return summary(req, rt.clock())


@router.post("/v1/requests/{request_id}/extend", response_model=Extended, tags=["requests"], responses=ERRORS)
def extend(request_id: str, body: ExtendBody, rt: RT, who: Admin) -> dict[str, Any]:
    """Extend the deadline (Art. 12(3)): a reason is required, two months past the original at most."""
    load_request(rt, request_id)
    ext = deadlines.extend(rt, request_id, body.days, body.reason, actor=f"api:{who.name}")
    return {"id": request_id, "due_at": ext.due_at, "original_due_at": ext.original_due_at,
            "latest_possible": ext.latest_possible}
