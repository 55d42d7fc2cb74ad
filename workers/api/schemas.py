"""The API's request and response models (pydantic) and the OpenAPI fragments built from them.

The OpenAPI document is built from these; they import nothing of the routes.
"""

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from discovery.engine.ledger import RequestStatus, RequestType
from discovery.i18n.languages import LanguageCode

NoNul = Field(pattern=r"^[^\x00]*$")  # PostgreSQL text cannot hold NUL: refuse it at the door


class ErrorDetail(BaseModel):
    code: str
    message: str
    details: list[dict[str, Any]] | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


Email = Field(min_length=1, max_length=320, json_schema_extra={"format": "email"})


class PlanBody(_Body):
    """A request's subject and kind: what a dry run plans for."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True, json_schema_extra={"examples": [
        {"type": "erasure", "email": "jane@example.com"}]})
    type: RequestType
    email: Annotated[str, Email, NoNul]
    systems: list[Annotated[str, Field(min_length=1, max_length=64), NoNul]] | None = Field(
        default=None, min_length=1, max_length=64,
        description="only these systems (names from the data map); omitted: every enabled system")
    confirm_others: Annotated[str | None, Field(min_length=3, max_length=1000, description=(
        "why an erasure or restriction may change records that also name other people; without it the plan "
        "refuses those systems")), NoNul] = None


class SubmitBody(PlanBody):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True, json_schema_extra={"examples": [
        {"type": "access", "email": "jane@example.com", "ticket": "4711", "language": "nb"}]})
    ticket: Annotated[str | None, Field(max_length=128), NoNul] = None
    callback_url: Annotated[str | None, Field(max_length=1024, pattern=r"^https?://[^\x00]+$", description=(
        "where dsar posts the signed outcome; must match the settings' api.callback_allow and resolve to a "
        "public address (or one in api.callback_networks), else 422 callback_refused"))] = None
    language: LanguageCode | None = Field(default=None, description=(
        "what the person is written to in (bundle page, ticket note); omitted: the settings' requests.language"))


class IdentifierView(BaseModel):
    type: str
    value: str
    source: str = Field(description="'request', or the system that taught it")
    via: str | None = Field(description="provenance: system, table or object, field, and the path from a direct match")
    round: int


class StepView(BaseModel):
    system: str
    entity: str
    action: str
    reason: str
    task: str | None


class RefusedView(BaseModel):
    system: str
    reason: str


class PlanView(BaseModel):
    identifiers: list[IdentifierView]
    steps: list[StepView]
    reach: dict[str, dict[str, dict[str, int]]] = Field(description=(
        "system -> entity -> records, distinct identifiers on them, not_the_subjects, left_alone (counts only)"))
    refused: list[RefusedView]
    locate_errors: dict[str, str]
    identifiers_refused: dict[str, int] = Field(description="per system, identifiers learned without provenance")


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


class ReportBackView(BaseModel):
    """A ticket note or callback in the outbox: delivered, or still tried (when next), refused or expired."""

    id: int
    kind: str = Field(description="ticket_note | callback")
    event: str = Field(description="request.held | request.extended | request.finished")
    status: str = Field(description="pending | delivered | refused | expired")
    attempts: int
    target: str = Field(description="the ticket id, or the callback URL without any password")
    next_attempt_at: datetime | None = Field(None, description="while pending: when it is tried next")
    delivered_at: datetime | None
    expires_at: datetime = Field(description="given up if not delivered by then (api.report_back_expiry_days)")
    last_error: str | None


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
    language: str | None = Field(description="what the person is written to in (en, nb)")


class RequestView(RequestSummary):
    subject: str = Field(description="the subject's e-mail, masked (j***@e***.com)")
    subject_email: str | None = Field(None, description="the full e-mail: only for a token with the `subject` scope")
    awaiting_verification: bool
    verified_at: datetime | None
    verified_by: str | None
    bundle_ready: bool
    bundle_sha256: str | None
    bundle_size: int | None
    error: str | None
    identifiers: list[IdentifierView]
    tasks: list[TaskView]
    report_back: list[ReportBackView] = Field(default_factory=list,
                                              description="ticket notes and callbacks about this request")


class ListedRequest(RequestSummary):
    subject: str = Field(description="the subject's e-mail, masked (j***@e***.com)")
    subject_email: str | None = Field(None, description="the full e-mail: only for a token with the `subject` scope")


class RequestList(BaseModel):
    requests: list[ListedRequest]
    count: int = Field(description="requests on this page")
    total: int = Field(description="requests matching the filters, on every page")
    page: int
    per_page: int
    limit: int = Field(description="the same as per_page (older clients page with limit and offset)")
    offset: int


class DenialBasis(StrEnum):
    UNFOUNDED_OR_EXCESSIVE = "unfounded_or_excessive"  # Art. 12(5)
    IDENTITY_NOT_VERIFIED = "identity_not_verified"  # Art. 12(6), 11(2)


class DenyBody(_Body):
    basis: DenialBasis = Field(description="Art. 12(5) manifestly unfounded or excessive, or identity not verified")
    reason: Annotated[str, Field(min_length=3, max_length=1000, description=(
        "why: recorded, audited and reported back to the ticket")), NoNul]


class CancelBody(_Body):
    reason: Annotated[str, Field(min_length=3, max_length=1000, description=(
        "e.g. how the person withdrew: recorded, audited and reported back to the ticket")), NoNul]


class RetryBody(_Body):
    systems: list[Annotated[str, Field(min_length=1, max_length=64), NoNul]] | None = Field(
        default=None, min_length=1, max_length=64, description="only these failed systems; omitted: every one")


class Closed(BaseModel):
    id: str
    status: str
    reason: str
    basis: str | None
    completed_at: datetime


class RetriedTask(BaseModel):
    system: str
    action: str
    why: str = Field(description="failed: it failed before; export: re-run so the bundle shows what is there now")


class Retried(BaseModel):
    id: str
    status: str
    due_at: datetime
    tasks: list[RetriedTask]
    relocated: dict[str, str | None] = Field(description="systems searched again -> their error now (null: fine)")


class AuditEntry(BaseModel):
    at: datetime
    event: str
    actor: str = Field(description="who: api:<token name>, an OS user, worker, scheduler ...")
    note: str | None
    details: dict[str, Any]


class AuditTrail(BaseModel):
    id: str
    events: list[AuditEntry]
    next_actions: list[str] = Field(description="what the request waits for, as dsar commands")


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
    DENIED = "denied"
    CANCELLED = "cancelled"


assert {f.value for f in StatusFilter} == {"open", *RequestStatus}, "StatusFilter must follow RequestStatus"


def json_body(model: type[BaseModel]) -> dict[str, Any]:
    """OpenAPI for endpoints that read the raw body themselves (signatures cover the exact bytes)."""
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": model.model_json_schema()}}}}


# The error responses every endpoint documents (the shape is the same whatever the status).
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 401, 403, 404, 409, 410, 413, 422, 503)}
