"""The console's pages and forms, under /ui. Thin: reads come from `queries`, every change from the domain
(pipeline.confirm_manual, deadlines.extend, scheduler.cancel, lifecycle's deny / cancel / retry), audited there with
the actor `ui:<token name>`."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from datetime import timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from discovery.engine import pipeline
from discovery.engine.bundles import bundle_unavailable
from discovery.engine.ledger import Request as LedgerRequest
from discovery.engine.ledger import RequestStatus, RequestType
from discovery.intake import api_tokens, download_tokens
from discovery.schedule import deadlines, scheduler
from workers.console import queries, sessions
from workers.console.web import (
    HEADERS,
    PREFIX,
    SCOPE_READ,
    Actor,
    Reader,
    Refused,
    checked_form,
    field,
    message,
    page,
    redirect,
    runtime,
    secure_cookie,
    session_lifetime,
)

router = APIRouter(prefix=PREFIX, include_in_schema=False)

_LOGIN_COOKIE = "dsar_login_csrf"  # the login form's CSRF token (double submit: no session exists yet)
_DOWNLOAD_SECONDS = 60  # the signed link the download button redirects to is followed at once
SORTS = ("due", "-due", "received", "-received")
STATUSES = ("open", "all", *(s.value for s in RequestStatus))
TYPES = tuple(t.value for t in RequestType)


def _next(target: str | None) -> str:
    """Only a path inside the console: `next` must not send a fresh login elsewhere."""
    if target and target.startswith(PREFIX + "/") and not target.startswith("//") and "\\" not in target:
        return target
    return f"{PREFIX}/"


# -- logging in and out ---------------------------------------------------------------------------------------

@router.get("/login", response_class=HTMLResponse)
def login_form(request: Request, next: str | None = None, error: str | None = None) -> Response:
    csrf = secrets.token_urlsafe(24)
    response = page(request, "login.html", None, csrf=csrf, next=_next(next), error=error)
    response.set_cookie(_LOGIN_COOKIE, csrf, max_age=900, httponly=True, samesite="strict", path=PREFIX,
                        secure=secure_cookie(request, runtime(request)))
    return response


@router.post("/login")
async def login(request: Request) -> Response:
    rt = runtime(request)
    form = await request.form()
    csrf, expected = form.get("csrf"), request.cookies.get(_LOGIN_COOKIE)
    if not (isinstance(csrf, str) and expected and secrets.compare_digest(csrf, expected)):
        return message(request, None, 403, "Not allowed", "This form was refused: its security token is missing "
                                                          "or out of date. Reload the login page and try again.")
    token = form.get("token")
    target = _next(form.get("next") if isinstance(form.get("next"), str) else None)  # type: ignore[arg-type]
    try:
        cookie, _who = sessions.login(rt, token if isinstance(token, str) else "", SCOPE_READ, session_lifetime(rt))
    except (api_tokens.TokenRejected, api_tokens.ScopeMissing) as exc:
        return page(request, "login.html", None, status=401 if isinstance(exc, api_tokens.TokenRejected) else 403,
                    csrf=csrf, next=target, error=str(exc).replace(" (Authorization: Bearer <token>)", ""))
    response = RedirectResponse(target, status_code=303, headers=HEADERS)
    response.set_cookie(sessions.COOKIE, cookie, max_age=int(session_lifetime(rt).total_seconds()), httponly=True,
                        samesite="strict", path=PREFIX, secure=secure_cookie(request, rt))
    response.delete_cookie(_LOGIN_COOKIE, path=PREFIX, httponly=True, samesite="strict")
    return response


@router.post("/logout")
async def logout(request: Request, who: Reader) -> Response:
    await checked_form(request, who)
    sessions.logout(runtime(request), request.cookies.get(sessions.COOKIE, ""), who)
    response = RedirectResponse(f"{PREFIX}/login", status_code=303, headers=HEADERS)
    response.delete_cookie(sessions.COOKIE, path=PREFIX, httponly=True, samesite="strict")
    return response


# -- open requests --------------------------------------------------------------------------------------------

@router.get("/", response_class=HTMLResponse)
def requests_page(request: Request, who: Reader,
                  status: Annotated[str, Query(max_length=32)] = "open",
                  type: Annotated[str, Query(max_length=32)] = "",
                  overdue: Annotated[bool, Query()] = False,
                  ticket: Annotated[str, Query(max_length=128)] = "",
                  sort: Annotated[str, Query(max_length=16)] = "due",
                  page_no: Annotated[int, Query(alias="page", ge=1, le=100_000)] = 1,
                  notice: str | None = None, error: str | None = None) -> Response:
    rt = runtime(request)
    status = status if status in STATUSES else "open"
    rtype = type if type in TYPES else ""
    sort = sort if sort in SORTS else "due"
    found = queries.list_requests(rt, status=status, type=rtype or None, overdue=overdue, ticket=ticket or None,
                                  sort=sort, page=page_no)
    filters = {"status": status, "type": rtype, "overdue": "1" if overdue else "", "ticket": ticket, "sort": sort}
    return page(request, "requests.html", who, found=found, filters=filters, statuses=STATUSES, types=TYPES,
                sorts=SORTS, notice=notice, error=error)


# -- one request ----------------------------------------------------------------------------------------------

def _request_or_404(request: Request, who: Any, request_id: str) -> queries.Detail | Response:
    found = queries.detail(runtime(request), request_id) if queries.is_request_id(request_id) else None
    if found is None:
        return message(request, who, 404, "Not found", "There is no request with this id.")
    return found


@router.get("/requests/{request_id}", response_class=HTMLResponse)
def request_page(request: Request, request_id: str, who: Reader, notice: str | None = None,
                 error: str | None = None) -> Response:
    found = _request_or_404(request, who, request_id)
    if isinstance(found, Response):
        return found
    rt = runtime(request)
    return page(request, "request.html", who, d=found, notice=notice, error=error,
                trail=queries.trail(rt, request_id), actions=queries.next_actions(rt, request_id),
                bundle_why=bundle_unavailable(found.req, found.now))


async def _act(request: Request, who: Any, request_id: str, fn: Callable[[Any], str]) -> Response:
    """Check the form, run one domain call; its one-line refusal (wrong state, bad input) comes back on the page."""
    form = await checked_form(request, who)
    if not queries.is_request_id(request_id):
        return message(request, who, 404, "Not found", "There is no request with this id.")
    try:
        done = fn(form)
    except (pipeline.InvalidInput, pipeline.NotFoundError, pipeline.StateConflict) as exc:
        return redirect(f"/requests/{request_id}", error=str(exc))
    return redirect(f"/requests/{request_id}", notice=done)


@router.post("/requests/{request_id}/confirm")
async def confirm(request: Request, request_id: str, who: Actor) -> Response:
    rt, wake = runtime(request), request.app.state.wake

    def run(form: Any) -> str:
        system = field(form, "system", 64)
        n = pipeline.confirm_manual(rt, wake, request_id, system, field(form, "note", 500), who.actor)
        return f"Confirmed the manual step in {system} ({n} task(s))."

    return await _act(request, who, request_id, run)


@router.post("/requests/{request_id}/extend")
async def extend(request: Request, request_id: str, who: Actor) -> Response:
    rt = runtime(request)

    def run(form: Any) -> str:
        days = field(form, "days", 4)
        if not days.isdigit():
            raise pipeline.InvalidInput("the extension is a whole number of days")
        ext = deadlines.extend(rt, request_id, int(days), field(form, "reason", 500), who.actor)
        return f"Extended: now due {ext.due_at:%Y-%m-%d}."

    return await _act(request, who, request_id, run)


@router.post("/requests/{request_id}/deny")
async def deny(request: Request, request_id: str, who: Actor) -> Response:
    rt = runtime(request)

    def run(form: Any) -> str:
        queries.deny(rt, request_id, field(form, "reason", 500), field(form, "basis", 200), who.actor)
        return "Denied."

    return await _act(request, who, request_id, run)


@router.post("/requests/{request_id}/cancel")
async def cancel(request: Request, request_id: str, who: Actor) -> Response:
    rt = runtime(request)

    def run(form: Any) -> str:
        queries.cancel(rt, request_id, field(form, "reason", 500), who.actor)
        return "Cancelled."

    return await _act(request, who, request_id, run)


@router.post("/requests/{request_id}/retry")
async def retry(request: Request, request_id: str, who: Actor) -> Response:
    rt, wake = runtime(request), request.app.state.wake

    def run(form: Any) -> str:
        systems = [s for s in form.getlist("system") if isinstance(s, str) and s] or None
        reason = field(form, "reason", 500)
        if not reason:
            raise pipeline.InvalidInput("a reason for the retry is required")
        queries.retry(rt, wake, request_id, systems, reason, who.actor)
        return f"Retrying {', '.join(systems) if systems else 'the failed systems'}."

    return await _act(request, who, request_id, run)


@router.get("/requests/{request_id}/download")
def download(request: Request, request_id: str, who: Reader) -> Response:
    """To the bundle through a signed link that works for a minute (the API's download-token path)."""
    if not who.allows("download"):
        raise Refused(who, f"Your token ({who.name}) lacks the 'download' scope this needs.")
    rt = runtime(request)
    found = _request_or_404(request, who, request_id)
    if isinstance(found, Response):
        return found
    why = bundle_unavailable(found.req, found.now)
    if why:
        return message(request, who, 409, "No bundle", why)
    with rt.sessions.begin() as s:
        pipeline.audit(s, "console.download", who.actor, s.get(LedgerRequest, request_id))
    token = download_tokens.make_token(rt.settings.secret_key, request_id,
                                       found.now + timedelta(seconds=_DOWNLOAD_SECONDS))
    return RedirectResponse(f"/v1/requests/{request_id}/bundle?token={token}", status_code=303, headers=HEADERS)


# -- scheduled actions and the data map -----------------------------------------------------------------------

@router.get("/scheduled", response_class=HTMLResponse)
def scheduled_page(request: Request, who: Reader, closed: bool = False, notice: str | None = None,
                   error: str | None = None) -> Response:
    rt = runtime(request)
    return page(request, "scheduled.html", who, actions=queries.scheduled(rt, closed), closed=closed,
                now=rt.clock(), notice=notice, error=error)


@router.post("/scheduled/{action_id}/cancel")
async def cancel_scheduled(request: Request, action_id: int, who: Actor) -> Response:
    form = await checked_form(request, who)
    try:
        scheduler.cancel(runtime(request), action_id, field(form, "reason", 500), who.actor)
    except (pipeline.InvalidInput, pipeline.NotFoundError) as exc:
        return redirect("/scheduled", error=str(exc))
    return redirect("/scheduled", notice=f"Cancelled scheduled action {action_id}.")


@router.get("/datamap", response_class=HTMLResponse)
def datamap_page(request: Request, who: Reader) -> Response:
    rt = runtime(request)
    return page(request, "datamap.html", who, systems=queries.datamap(rt), controller=rt.data_map.controller,
                text=queries.text)
