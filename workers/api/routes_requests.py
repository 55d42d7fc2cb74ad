"""Request routes: submit, list and read requests; verify identity, confirm manual steps, extend deadlines; deny,
cancel and retry a request and read its audit trail (discovery/engine/lifecycle.py: the CLI's rules)."""

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse

from discovery.engine import callbacks, lifecycle, pipeline
from discovery.engine.ledger import Request as LedgerRequest
from discovery.engine.ledger import RequestType
from discovery.intake import outbox
from discovery.schedule import deadlines
from workers.api.deps import RT, Act, Read, Submit, Wake
from workers.api.errors import ApiError, fail
from workers.api.schemas import (
    ERRORS,
    AuditTrail,
    CancelBody,
    Closed,
    ConfirmBody,
    Confirmed,
    DenyBody,
    ExtendBody,
    Extended,
    PlanBody,
    PlanView,
    RequestList,
    RequestSummary,
    RequestView,
    Retried,
    RetryBody,
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
def list_requests(rt: RT, who: Read, status: StatusFilter | None = None,
                  type: RequestType | None = None,
                  ticket: Annotated[str | None, Query(max_length=128, description="the ticket reference")] = None,
                  overdue: Annotated[bool, Query(description="true: open and past due_at, most late first")] = False,
                  due_within_days: Annotated[int | None, Query(ge=0, le=3650, description=(
                      "open requests due within this many days, late ones included"))] = None,
                  page: Annotated[int, Query(ge=1, le=100_000)] = 1,
                  per_page: Annotated[int | None, Query(ge=1, le=lifecycle.MAX_PER_PAGE)] = None,
                  limit: Annotated[int | None, Query(ge=1, le=lifecycle.MAX_PER_PAGE, description=(
                      "older paging: the same as per_page"))] = None,
                  offset: Annotated[int | None, Query(ge=0, le=1_000_000, description=(
                      "older paging: requests to skip (instead of page)"))] = None) -> dict[str, Any]:
    """Requests, newest first (by deadline with `overdue` or `due_within_days`), paged, with `total`. The subject
    is masked; a token with the `subject` scope also gets the full e-mail (`subject_email`)."""
    size, now = per_page or limit or 50, rt.clock()
    found = lifecycle.list_requests(rt, status=status.value if status else None, type=type.value if type else None,
                                    overdue=overdue, ticket=ticket, page=page, per_page=size, now=now,
                                    due_within_days=due_within_days, offset=offset)
    full = who.allows("subject")
    with rt.sessions() as s:  # the summary's fields (extension, language ...) come from the rows themselves
        rows = {r.id: r for r in (s.get(LedgerRequest, i.id) for i in found.items) if r is not None}
        items = [{**summary(rows[i.id], now), **i.to_dict(full_subject=full)}
                 for i in found.items if i.id in rows]
    return {"requests": items, "count": len(items), "total": found.total, "page": found.page,
            "per_page": found.per_page, "limit": found.per_page,
            "offset": offset if offset is not None else (found.page - 1) * found.per_page}


@router.get("/v1/requests/{request_id}", response_model=RequestView, tags=["requests"], responses=ERRORS)
def get_request(request_id: str, rt: RT, who: Read) -> dict[str, Any]:
    """A request with every task, its deadline and days left. The subject's e-mail and identifiers are masked, as
    on the list; a token with the `subject` scope gets them in full (`subject_email`, identifier values)."""
    req, tasks = load_request(rt, request_id)
    body = {**view(req, tasks, rt.clock(), pipeline.identifiers(rt, request_id)),
            "report_back": outbox.state(rt, request_id)}
    if not who.allows("subject"):
        body["subject_email"] = None
        body["identifiers"] = [{**i, "value": lifecycle.mask_value(i["value"])} for i in body["identifiers"]]
    return body


@router.post("/v1/requests/{request_id}/confirm", response_model=Confirmed, tags=["requests"], responses=ERRORS)
def confirm(request_id: str, body: ConfirmBody, rt: RT, wake: Wake, who: Act) -> dict[str, Any]:
    """A person did a system's manual step (e.g. 'Forget' in a vendor UI): its tasks complete, audited."""
    load_request(rt, request_id)
    n = _conflict(lambda: pipeline.confirm_manual(rt, wake, request_id, body.system, body.note, f"api:{who.name}"))
    return {"id": request_id, "confirmed_tasks": n}


@router.post("/v1/requests/{request_id}/verify", response_model=RequestSummary, tags=["requests"],
             responses=ERRORS)
def verify(request_id: str, body: VerifyBody, rt: RT, wake: Wake, who: Act) -> dict[str, Any]:
    """The requester's right to act for the subject was checked: the held request proceeds (audited)."""
    load_request(rt, request_id)
    req = _conflict(lambda: pipeline.verify_request(rt, wake, request_id, f"api:{who.name}", body.note))
    return summary(req, rt.clock())


@router.post("/v1/requests/{request_id}/extend", response_model=Extended, tags=["requests"], responses=ERRORS)
def extend(request_id: str, body: ExtendBody, rt: RT, who: Act) -> dict[str, Any]:
    """Extend the deadline (Art. 12(3)): a reason is required, two months past the original at most."""
    load_request(rt, request_id)
    ext = deadlines.extend(rt, request_id, body.days, body.reason, actor=f"api:{who.name}")
    return {"id": request_id, "due_at": ext.due_at, "original_due_at": ext.original_due_at,
            "latest_possible": ext.latest_possible}


# -- lifecycle: deny, cancel, retry, audit trail ---------------------------------------------------

def _closed(req: LedgerRequest) -> dict[str, Any]:
    return {"id": req.id, "status": req.status, "reason": req.close_reason, "basis": req.close_basis,
            "completed_at": req.completed_at}


@router.post("/v1/requests/{request_id}/deny", response_model=Closed, tags=["requests"], responses=ERRORS)
def deny(request_id: str, body: DenyBody, rt: RT, who: Act) -> dict[str, Any]:
    """Refuse an open request (Art. 12(5) manifestly unfounded or excessive, or the identity not verified): tasks
    not started are cancelled, the reason is audited and reported back to the ticket. 409 when it is not open."""
    load_request(rt, request_id)
    return _closed(lifecycle.deny_request(rt, request_id, body.reason, body.basis.value, f"api:{who.name}"))


@router.post("/v1/requests/{request_id}/cancel", response_model=Closed, tags=["requests"], responses=ERRORS)
def cancel(request_id: str, body: CancelBody, rt: RT, who: Act) -> dict[str, Any]:
    """The person withdrew: nothing more runs; work already done stays in the receipts. 409 when it is not open."""
    load_request(rt, request_id)
    return _closed(lifecycle.cancel_request(rt, request_id, body.reason, f"api:{who.name}"))


@router.post("/v1/requests/{request_id}/retry", response_model=Retried, tags=["requests"], responses=ERRORS)
def retry(request_id: str, rt: RT, wake: Wake, who: Act, body: RetryBody | None = None) -> dict[str, Any]:
    """Run the failed systems of a request that completed with errors or failed again, on the same request and
    deadline; exports of every system re-run so the new bundle is whole. 409 for any other state."""
    load_request(rt, request_id)
    done = lifecycle.retry_request(rt, wake, request_id, body.systems if body else None, f"api:{who.name}")
    return {"id": request_id, "status": done.request.status, "due_at": done.request.due_at, "tasks": done.tasks,
            "relocated": done.relocated}


@router.get("/v1/requests/{request_id}/audit", response_model=AuditTrail, tags=["requests"], responses=ERRORS)
def audit_trail(request_id: str, rt: RT, _who: Read) -> dict[str, Any]:
    """Who did what and when, with their notes (oldest first), and the next actions the request waits for."""
    load_request(rt, request_id)
    return {"id": request_id, "events": lifecycle.audit_trail(rt, request_id),
            "next_actions": lifecycle.next_actions(rt, request_id)}
