"""The HTTP API (`dsar serve`): intake, status, deadlines, downloads, ticket webhooks, account events.

FastAPI on uvicorn; the OpenAPI document is served at /openapi.json. Endpoints are thin: the
domain lives in discovery/ (pipeline, api_tokens, download_tokens, tickets, deadlines). Every
error is JSON of one shape: {"error": {"code": "...", "message": "...", "details": [...]?}}.
"""

import re
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import ExitStack, asynccontextmanager
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Annotated, Any, NoReturn, TypeVar

import orjson
import sqlalchemy as sa
import structlog
from fastapi import APIRouter, Depends, FastAPI, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy.exc import DataError, OperationalError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from connectors.emails import InvalidEmail, normalise_email
from discovery.bundle.archive import ArchiveUnavailable, NotInArchive, archive_store
from discovery.engine import pipeline
from discovery.engine.bundles import bundle_unavailable
from discovery.engine.db import LedgerUnavailable
from discovery.engine.ledger import OPEN_STATUSES, RequestStatus, RequestType, Task
from discovery.engine.ledger import Request as LedgerRequest
from discovery.engine.runtime import Runtime
from discovery.intake import api_tokens, download_tokens, tickets
from discovery.intake.api_tokens import TokenInfo
from discovery.schedule import deadlines
from discovery.schedule.scheduler import schedule_account_deletion

log = structlog.get_logger(__name__)

_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_MAX_WEBHOOK_BYTES = 64 * 1024
_PRESIGN_SECONDS = 300  # the redirect is followed at once; a short link leaks little
NoNul = Field(pattern=r"^[^\x00]*$")  # PostgreSQL text cannot hold NUL: refuse it at the door


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, details: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.details = status, code, message, details


def fail(status: int, code: str, message: str) -> NoReturn:
    raise ApiError(status, code, message)


def error_body(code: str, message: str, details: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message}
    if details:
        error["details"] = details
    return {"error": error}


# -- schemas (the OpenAPI document is built from these) -------------------------------------------

class ErrorDetail(BaseModel):
    code: str
    message: str
    details: list[dict[str, Any]] | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


Email = Field(min_length=1, max_length=320, json_schema_extra={"format": "email"})


class SubmitBody(_Body):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True, json_schema_extra={"examples": [
        {"type": "access", "email": "jane@example.com", "ticket": "4711"}]})
    type: RequestType
    email: Annotated[str, Email, NoNul]
    ticket: Annotated[str | None, Field(max_length=128), NoNul] = None
    callback_url: Annotated[str | None, Field(max_length=1024, pattern=r"^https?://[^\x00]+$")] = None
    systems: list[Annotated[str, Field(min_length=1, max_length=64), NoNul]] | None = Field(
        default=None, min_length=1, max_length=64,
        description="only these systems (names from the data map); omitted: every enabled system")


class Submitted(BaseModel):
    id: str
    type: str
    status: str
    created: bool = Field(description="false: an open request for the same person and type (or ticket) exists")
    due_at: datetime


class TaskView(BaseModel):
    system: str
    action: str
    status: str
    attempts: int
    entities: list[Any]
    error: str | None
    records: int | None
    changed: dict[str, Any] | None
    manual_steps: list[Any] | None


class RequestSummary(BaseModel):
    id: str
    type: str
    status: str
    source: str
    ticket: str | None
    received_at: datetime
    due_at: datetime
    days_left: int | None = Field(description="whole days until due_at while open; negative when late")
    overdue: bool
    original_due_at: datetime | None
    extension_reason: str | None
    completed_at: datetime | None


class RequestView(RequestSummary):
    subject_email: str
    awaiting_verification: bool
    verified_at: datetime | None
    verified_by: str | None
    bundle_ready: bool
    bundle_sha256: str | None
    bundle_size: int | None
    error: str | None
    tasks: list[TaskView]


class RequestList(BaseModel):
    requests: list[RequestSummary]
    count: int
    limit: int
    offset: int


class ConfirmBody(_Body):
    system: Annotated[str, Field(min_length=1, max_length=64), NoNul]
    note: Annotated[str, Field(min_length=1, max_length=500), NoNul]


class VerifyBody(_Body):
    note: Annotated[str, Field(min_length=1, max_length=500, description="how the identity was verified"), NoNul]


class ExtendBody(_Body):
    days: int = Field(ge=1, le=62, description="days added to due_at; the total stays within two months")
    reason: Annotated[str, Field(min_length=3, max_length=1000), NoNul]


class Extended(BaseModel):
    id: str
    due_at: datetime
    original_due_at: datetime
    latest_possible: datetime


class Confirmed(BaseModel):
    id: str
    confirmed_tasks: int


class DownloadLink(BaseModel):
    url: str
    expires_at: datetime


class AccountDeletedBody(_Body):
    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True, json_schema_extra={"examples": [
        {"email": "jane@example.com", "event_id": "evt-1"}]})
    email: Annotated[str, Email, NoNul]
    event_id: Annotated[str | None, Field(max_length=128), NoNul] = None
    grace_days: int | None = Field(None, ge=1, le=365, description="default: the scheduler's grace period")


class Scheduled(BaseModel):
    scheduled_action_id: int
    due_at: datetime
    status: str


class StatusFilter(StrEnum):
    OPEN = "open"
    AWAITING_VERIFICATION = "awaiting_verification"
    RECEIVED = "received"
    DISCOVERING = "discovering"
    RUNNING = "running"
    AWAITING_MANUAL = "awaiting_manual"
    MERGING = "merging"
    COMPLETED = "completed"
    COMPLETED_WITH_ERRORS = "completed_with_errors"
    FAILED = "failed"


assert {f.value for f in StatusFilter} == {"open", *RequestStatus}, "StatusFilter must follow RequestStatus"


def _json_body(model: type[BaseModel]) -> dict[str, Any]:
    """OpenAPI for endpoints that read the raw body themselves (signatures cover the exact bytes)."""
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": model.model_json_schema()}}}}


_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 401, 403, 404, 409, 410, 413, 422, 503)}


# -- views -----------------------------------------------------------------------------------

def _summary(req: LedgerRequest, now: datetime) -> dict[str, Any]:
    is_open = req.status in OPEN_STATUSES
    return {"id": req.id, "type": req.type, "status": req.status, "source": req.source, "ticket": req.ticket_ref,
            "received_at": req.received_at, "due_at": req.due_at,
            "days_left": deadlines.days_left(req.due_at, now) if is_open else None,
            "overdue": is_open and req.due_at < now, "original_due_at": req.original_due_at,
            "extension_reason": req.extension_reason, "completed_at": req.completed_at}


def _view(req: LedgerRequest, tasks: list[Task], now: datetime) -> dict[str, Any]:
    def records(t: Task) -> int | None:
        if t.action != "export" or not t.result:
            return None
        return sum(e["records"] for e in t.result.get("entities", {}).values())

    return {**_summary(req, now), "subject_email": req.subject_email,
            "awaiting_verification": req.status == RequestStatus.AWAITING_VERIFICATION,
            "verified_at": req.verified_at, "verified_by": req.verified_by,
            "bundle_ready": bool(req.bundle_path) and req.bundle_deleted_at is None,
            "bundle_sha256": req.bundle_sha256, "bundle_size": req.bundle_size, "error": req.error,
            "tasks": [{"system": t.system, "action": t.action, "status": t.status, "attempts": t.attempts,
                       "entities": t.entities, "error": t.error, "records": records(t),
                       "changed": (t.result or {}).get("changed"),
                       "manual_steps": (t.result or {}).get("manual_steps")} for t in tasks]}


# -- wiring ----------------------------------------------------------------------------------

class SafeWakeups:
    """Wake-ups that never fail an accepted request: the ledger row is written, the sweeper re-wakes it."""

    def __init__(self, inner: pipeline.Wakeups) -> None:
        self.inner = inner

    def _send(self, fn: Callable[[Any], None], arg: Any, what: str) -> None:
        try:
            fn(arg)
        except Exception as exc:
            log.warning("api.wake_failed", what=what, target=str(arg), error=type(exc).__name__)

    def discover(self, request_id: str) -> None:
        self._send(self.inner.discover, request_id, "discover")

    def execute(self, task_id: int) -> None:
        self._send(self.inner.execute, task_id, "execute")

    def merge(self, request_id: str) -> None:
        self._send(self.inner.merge, request_id, "merge")


class Guard:
    """Catches what escapes the routes: a JSON 500 (no traceback, no personal data) and one log line per call."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, status, response_started = time.perf_counter(), 500, False

        async def send_wrapper(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                status, response_started = message["status"], True
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except Exception:
            log.exception("api.crash", method=scope["method"], path=scope["path"])
            if response_started:
                raise
            body = orjson.dumps(error_body("internal", "internal error; the server log has the details"))
            await send({"type": "http.response.start", "status": 500,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})
        finally:  # the path only: query strings carry download tokens
            log.info("api.request", method=scope["method"], path=scope["path"], status=status,
                     ms=round((time.perf_counter() - started) * 1000, 1))


async def _runtime(request: Request) -> Runtime:
    return request.app.state.rt  # type: ignore[no-any-return]


async def _wakeups(request: Request) -> pipeline.Wakeups:
    return request.app.state.wake  # type: ignore[no-any-return]


RT = Annotated[Runtime, Depends(_runtime)]
Wake = Annotated[pipeline.Wakeups, Depends(_wakeups)]
_bearer = HTTPBearer(auto_error=False, description="An API token from `dsar token create`")
Creds = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


def _authenticate(rt: Runtime, creds: HTTPAuthorizationCredentials | None, scope: str) -> TokenInfo:
    try:
        return api_tokens.authenticate(rt, creds.credentials if creds else None, scope)
    except api_tokens.TokenRejected as exc:
        fail(401, "unauthorized", str(exc))
    except api_tokens.ScopeMissing as exc:
        fail(403, "forbidden", str(exc))


def _need(scope: str) -> Callable[..., TokenInfo]:
    def check(rt: RT, creds: Creds) -> TokenInfo:
        return _authenticate(rt, creds, scope)

    return check


Submit = Annotated[TokenInfo, Depends(_need("submit"))]
Read = Annotated[TokenInfo, Depends(_need("read"))]
Admin = Annotated[TokenInfo, Depends(_need("admin"))]
Download = Annotated[TokenInfo, Depends(_need("download"))]
Signature = Annotated[str | None, Header(alias=tickets.SIGNATURE_HEADER,
                                         description="t=<unix>,v1=<hex HMAC-SHA256(secret, '<t>.<raw body>')>")]
router = APIRouter()


def create_app(rt: Runtime | None = None, wake: pipeline.Wakeups | None = None) -> FastAPI:
    """The ASGI app. Without arguments (uvicorn's factory) it wires this process from the settings."""
    own = rt is None
    if rt is None:
        from workers import app as process

        rt = process.runtime()  # settings, broker, ledger schema: fail at start, not on the first call
    if wake is None:
        from workers.actors import WAKE

        wake = WAKE
    runtime = rt

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        with ExitStack() as stack:
            if own:
                from workers import app as process
                from workers.inprocess import in_process_worker_if_embedded

                stack.enter_context(in_process_worker_if_embedded(process.is_embedded()))
            yield
        if own:
            runtime.close()

    api = FastAPI(title="dsar", version="1", lifespan=lifespan,
                  description="Answer GDPR data-subject requests: intake, status, deadlines, downloads, webhooks. "
                              'Every error is {"error": {"code", "message", "details"?}}.')
    api.state.rt, api.state.wake = rt, SafeWakeups(wake)
    api.add_middleware(Guard)
    for exc_type, handler in _HANDLERS.items():
        api.add_exception_handler(exc_type, handler)
    api.include_router(router)
    return api


# -- errors ----------------------------------------------------------------------------------

def _reply(status: int, code: str, message: str, details: list[dict[str, Any]] | None = None,
           headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_body(code, message, details), status_code=status, headers=headers)


def _validation_details(errors: Any) -> list[dict[str, Any]]:
    # The input itself is never echoed: it may be an e-mail.
    return [{"loc": [str(p) for p in e.get("loc", ())], "message": str(e.get("msg", ""))} for e in errors]


async def _on_api_error(_r: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return _reply(exc.status, exc.code, exc.message, exc.details)


async def _on_invalid(_r: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return _reply(422, "validation_error", "the request is not valid", _validation_details(exc.errors()))


async def _on_http(_r: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return _reply(exc.status_code, code, str(exc.detail), headers=getattr(exc, "headers", None))


async def _on_not_found(_r: Request, exc: Exception) -> JSONResponse:
    return _reply(404, "not_found", str(exc))


async def _on_bad_input(_r: Request, exc: Exception) -> JSONResponse:
    return _reply(422, "invalid_input", str(exc))


async def _on_data(_r: Request, _exc: Exception) -> JSONResponse:
    return _reply(422, "invalid_input", "a value is not acceptable to the ledger")


async def _on_down(_r: Request, _exc: Exception) -> JSONResponse:
    return _reply(503, "unavailable", "the ledger database is unreachable; retry later", headers={"Retry-After": "5"})


_HANDLERS: dict[type[Exception], Callable[[Request, Exception], Any]] = {
    ApiError: _on_api_error, RequestValidationError: _on_invalid, StarletteHTTPException: _on_http,
    pipeline.NotFoundError: _on_not_found, InvalidEmail: _on_bad_input, pipeline.InvalidInput: _on_bad_input,
    tickets.TicketError: _on_bad_input, DataError: _on_data, OperationalError: _on_down, LedgerUnavailable: _on_down,
}


def _load(rt: Runtime, request_id: str) -> tuple[LedgerRequest, list[Task]]:
    if not _UUID.match(request_id):  # not an id dsar made: no need to ask the database
        fail(404, "not_found", "unknown request")
    with rt.sessions() as s:
        req = s.get(LedgerRequest, request_id)
        if req is None:
            fail(404, "not_found", f"unknown request {request_id}")
        return req, list(req.tasks)


def _conflict(fn: Callable[[], Any]) -> Any:
    """State errors of the pipeline (not awaiting verification, no manual step) are conflicts."""
    try:
        return fn()
    except pipeline.InvalidInput as exc:
        fail(409, "conflict", str(exc))


# -- requests --------------------------------------------------------------------------------

@router.get("/healthz", tags=["operations"])
def healthz(rt: RT) -> dict[str, bool]:
    with rt.engine.connect() as conn:
        conn.execute(sa.text("SELECT 1"))
    return {"ok": True}


def _submitted(result: pipeline.Submitted) -> JSONResponse:
    req = result.request
    body = {"id": req.id, "type": req.type, "status": req.status, "created": result.created,
            "due_at": req.due_at.isoformat()}
    return JSONResponse(body, status_code=202 if result.created else 200)


@router.post("/v1/requests", status_code=202, response_model=Submitted, tags=["requests"],
             responses={200: {"model": Submitted, "description": "an open request for the same person and type"},
                        **_ERRORS})
def submit(body: SubmitBody, rt: RT, wake: Wake, who: Submit) -> JSONResponse:
    """Submit a request: 202 with its id (200 with the existing id when one is open already)."""
    return _submitted(pipeline.submit(rt, wake, body.type.value, body.email, body.ticket, actor=f"api:{who.name}",
                                      source="api", callback_url=body.callback_url, systems=body.systems))


@router.get("/v1/requests", response_model=RequestList, tags=["requests"], responses=_ERRORS)
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
        items = [_summary(r, now) for r in s.scalars(q.order_by(order, LedgerRequest.id).limit(limit).offset(offset))]
    return {"requests": items, "count": len(items), "limit": limit, "offset": offset}


@router.get("/v1/requests/{request_id}", response_model=RequestView, tags=["requests"], responses=_ERRORS)
def get_request(request_id: str, rt: RT, _who: Read) -> dict[str, Any]:
    """A request with every task, its deadline and days left."""
    req, tasks = _load(rt, request_id)
    return _view(req, tasks, rt.clock())


@router.post("/v1/requests/{request_id}/confirm", response_model=Confirmed, tags=["requests"], responses=_ERRORS)
def confirm(request_id: str, body: ConfirmBody, rt: RT, wake: Wake, who: Admin) -> dict[str, Any]:
    """A person did a system's manual step (e.g. 'Forget' in a vendor UI): its tasks complete, audited."""
    _load(rt, request_id)
    n = _conflict(lambda: pipeline.confirm_manual(rt, wake, request_id, body.system, body.note, f"api:{who.name}"))
    return {"id": request_id, "confirmed_tasks": n}


@router.post("/v1/requests/{request_id}/verify", response_model=RequestSummary, tags=["requests"],
             responses=_ERRORS)
def verify(request_id: str, body: VerifyBody, rt: RT, wake: Wake, who: Admin) -> dict[str, Any]:
    """The requester's right to act for the subject was checked: the held request proceeds (audited)."""
    _load(rt, request_id)
    req = _conflict(lambda: pipeline.verify_request(rt, wake, request_id, f"api:{who.name}", body.note))
    return _summary(req, rt.clock())


@router.post("/v1/requests/{request_id}/extend", response_model=Extended, tags=["requests"], responses=_ERRORS)
def extend(request_id: str, body: ExtendBody, rt: RT, who: Admin) -> dict[str, Any]:
    """Extend the deadline (Art. 12(3)): a reason is required, two months past the original at most."""
    _load(rt, request_id)
    ext = deadlines.extend(rt, request_id, body.days, body.reason, actor=f"api:{who.name}")
    return {"id": request_id, "due_at": ext.due_at, "original_due_at": ext.original_due_at,
            "latest_possible": ext.latest_possible}


# -- downloads -------------------------------------------------------------------------------

def _ready_bundle(rt: Runtime, req: LedgerRequest) -> str:
    why = bundle_unavailable(req, rt.clock())
    if why:
        fail(410 if req.bundle_path else 409, "gone" if req.bundle_path else "not_ready", why)
    assert req.bundle_path
    return req.bundle_path


@router.post("/v1/requests/{request_id}/download-link", response_model=DownloadLink, tags=["downloads"],
             responses=_ERRORS)
def download_link(request_id: str, rt: RT, _who: Download) -> dict[str, Any]:
    """A signed, expiring link to the bundle that the person can open without an API token."""
    req, _ = _load(rt, request_id)
    _ready_bundle(rt, req)
    url, expires_at = download_tokens.download_link(rt.settings, request_id, rt.clock())
    return {"url": url, "expires_at": expires_at}


@router.get("/v1/requests/{request_id}/bundle", tags=["downloads"], response_model=None,
            responses={200: {"content": {"application/zip": {}}, "description": "the bundle (ZIP)"},
                       307: {"description": "redirect to a short-lived presigned link"}, **_ERRORS})
def bundle(request_id: str, rt: RT, creds: Creds,
           token: Annotated[str | None, Query(max_length=512, description="a download token")] = None,
           ) -> StreamingResponse | RedirectResponse:
    """The bundle, with an API token (download scope) or a download token made for the person."""
    if token:
        try:
            grant = download_tokens.read_token(rt.settings.secret_key, token, rt.clock())
        except download_tokens.DownloadTokenError as exc:
            fail(401, exc.code, str(exc))
        if grant.request_id != request_id:
            fail(403, "forbidden", "this download token is for another request")
        actor = "download-token"
    else:
        actor = f"api:{_authenticate(rt, creds, 'download').name}"
    req, _ = _load(rt, request_id)
    uri = _ready_bundle(rt, req)
    store = archive_store(rt.settings, rt.env)
    stream = None
    try:
        link = store.presign_uri(uri, _PRESIGN_SECONDS)
        if not link:
            stream = store.open_uri(uri)
    except NotInArchive:
        fail(410, "gone", f"the bundle of request {request_id} is no longer in the archive")
    except ArchiveUnavailable:
        fail(503, "unavailable", "the archive store is unreachable; retry later")
    with rt.sessions.begin() as s:
        pipeline.audit(s, "bundle.downloaded", actor, s.get(LedgerRequest, request_id), redirect=bool(link))
    if link:
        return RedirectResponse(link, status_code=307)
    headers = {"Content-Disposition": f'attachment; filename="dsar-{request_id}.zip"'}
    if req.bundle_size:
        headers["Content-Length"] = str(req.bundle_size)
    return StreamingResponse(_chunks(stream), media_type="application/zip", headers=headers)


def _chunks(stream: Any, size: int = 1 << 16) -> Iterator[bytes]:
    try:
        while chunk := stream.read(size):
            yield chunk
    finally:
        stream.close()


# -- webhooks --------------------------------------------------------------------------------

async def _raw_body(request: Request) -> bytes:
    too_large = f"webhook bodies are at most {_MAX_WEBHOOK_BYTES} bytes"
    length = request.headers.get("content-length") or "0"
    if not length.isdigit() or int(length) > _MAX_WEBHOOK_BYTES:
        fail(413, "too_large", too_large)
    body = await request.body()
    if len(body) > _MAX_WEBHOOK_BYTES:
        fail(413, "too_large", too_large)
    return body


def _secret(rt: Runtime, env_name: str, what: str) -> bytes:
    value = rt.env.get(env_name, "")
    if not value:
        fail(503, "not_configured", f"{what} is not configured (no secret in {env_name})")
    return value.encode()


def _verify_signed(rt: Runtime, body: bytes, env_name: str, what: str, header: str | None) -> None:
    try:
        tickets.verify_signature(_secret(rt, env_name, what), body, header, rt.clock(),
                                 rt.settings.api.signature_tolerance_seconds)
    except tickets.SignatureError as exc:
        fail(401, "bad_signature", str(exc))


M = TypeVar("M", bound=BaseModel)


def _parse(model: type[M], body: bytes) -> M:
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        raise ApiError(422, "validation_error", "the request is not valid", _validation_details(exc.errors())) \
            from None


def _submit_ticket(rt: Runtime, wake: pipeline.Wakeups, intake: tickets.TicketIntake, source: str) -> JSONResponse:
    return _submitted(pipeline.submit(rt, wake, intake.type, intake.subject_email, intake.ticket_id,
                                      actor=f"webhook:{source}", source=source,
                                      requester_email=intake.requester_email, callback_url=intake.callback_url))


_TICKET_DONE = {200: {"model": Submitted, "description": "this ticket made a request already"}, **_ERRORS}


@router.post("/v1/tickets", status_code=202, response_model=Submitted, tags=["webhooks"], responses=_TICKET_DONE,
             openapi_extra=_json_body(tickets.TicketWebhook))
async def ticket_webhook(request: Request, rt: RT, wake: Wake, signature: Signature = None) -> JSONResponse:
    """A helpdesk ticket becomes a request (once per ticket). A requester who is not the subject is held."""
    body = await _raw_body(request)
    _verify_signed(rt, body, rt.settings.api.ticket_webhook_secret_env, "the ticket webhook", signature)
    intake = tickets.from_webhook(_parse(tickets.TicketWebhook, body))
    return await run_in_threadpool(_submit_ticket, rt, wake, intake, "ticket")


@router.post("/v1/tickets/freshdesk", status_code=202, response_model=Submitted, tags=["webhooks"],
             responses=_TICKET_DONE, openapi_extra={"requestBody": {"required": True, "content": {
                 "application/json": {"schema": {"type": "object", "description": (
                     "Freshdesk 'Trigger webhook' JSON (see docs/architecture.md); the shared secret goes in "
                     "the header named by api.freshdesk_secret_header"), "examples": [{"freshdesk_webhook": {
                         "ticket_id": "4711", "ticket_requester_email": "jane@example.com",
                         "ticket_cf_dsar_request_type": "Access", "ticket_tags": "dsar-access"}}]}}}}})
async def freshdesk_webhook(request: Request, rt: RT, wake: Wake) -> JSONResponse:
    """Freshdesk's webhook: a ticket with a request type in a ticket field or tag becomes a request."""
    settings = rt.settings.api
    body = await _raw_body(request)
    expected = _secret(rt, settings.freshdesk_secret_env, "the Freshdesk webhook").decode()
    try:
        tickets.check_shared_secret(expected, request.headers.get(settings.freshdesk_secret_header),
                                    settings.freshdesk_secret_header)
    except tickets.SignatureError as exc:
        fail(401, "bad_signature", str(exc))
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        fail(422, "validation_error", "body is not JSON")
    intake = tickets.from_freshdesk(payload, tickets.FreshdeskFields(
        settings.freshdesk_type_field, settings.freshdesk_subject_field, settings.freshdesk_tag_prefix))
    return await run_in_threadpool(_submit_ticket, rt, wake, intake, "freshdesk")


@router.post("/v1/events/account-deleted", status_code=202, response_model=Scheduled, tags=["webhooks"],
             responses=_ERRORS, openapi_extra=_json_body(AccountDeletedBody))
async def account_deleted(request: Request, rt: RT, signature: Signature = None) -> dict[str, Any]:
    """The account service deleted an account: the erasure is scheduled after the grace period."""
    body = await _raw_body(request)
    _verify_signed(rt, body, rt.settings.api.events_secret_env, "the account events webhook", signature)
    event = _parse(AccountDeletedBody, body)
    return await run_in_threadpool(_schedule_erasure, rt, event)


def _schedule_erasure(rt: Runtime, event: AccountDeletedBody) -> dict[str, Any]:
    email = normalise_email(event.email)
    grace = timedelta(days=event.grace_days) if event.grace_days is not None else None
    action = schedule_account_deletion(rt, email, grace, "event:account-deleted")
    return {"scheduled_action_id": action.id, "due_at": action.due_at, "status": action.status}
