"""Webhook routes: helpdesk tickets (signed, or Freshdesk's) become requests; account-deleted events, erasures.

Each reads the raw body itself: the signature covers the exact bytes.
"""

from datetime import timedelta
from typing import Annotated, Any, TypeVar

import orjson
from fastapi import APIRouter, Header, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool

from connectors.emails import normalise_email
from discovery.engine import callbacks, pipeline
from discovery.engine.runtime import Runtime
from discovery.intake import tickets
from discovery.schedule.scheduler import schedule_account_deletion
from workers.api.deps import RT, Wake
from workers.api.errors import ApiError, fail, validation_details
from workers.api.schemas import ERRORS, AccountDeletedBody, Scheduled, Submitted, json_body
from workers.api.views import submitted

_MAX_WEBHOOK_BYTES = 64 * 1024

Signature = Annotated[str | None, Header(alias=tickets.SIGNATURE_HEADER,
                                         description="t=<unix>,v1=<hex HMAC-SHA256(secret, '<t>.<raw body>')>")]
router = APIRouter()


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
        raise ApiError(422, "validation_error", "the request is not valid", validation_details(exc.errors())) \
            from None


def _submit_ticket(rt: Runtime, wake: pipeline.Wakeups, intake: tickets.TicketIntake, source: str) -> JSONResponse:
    callbacks.check_url(rt.settings.api, intake.callback_url)  # 422 callback_refused: not in api.callback_allow
    return submitted(pipeline.submit(rt, wake, intake.type, intake.subject_email, intake.ticket_id,
                                     actor=f"webhook:{source}", source=source,
                                     requester_email=intake.requester_email, callback_url=intake.callback_url,
                                     language=intake.language))


_TICKET_DONE = {200: {"model": Submitted, "description": "this ticket made a request already"}, **ERRORS}


@router.post("/v1/tickets", status_code=202, response_model=Submitted, tags=["webhooks"], responses=_TICKET_DONE,
             openapi_extra=json_body(tickets.TicketWebhook))
async def ticket_webhook(request: Request, rt: RT, wake: Wake, signature: Signature = None) -> JSONResponse:
    """A helpdesk ticket becomes a request (once per ticket: a redelivery answers 200 with it, another type 409).
    A requester who is not the subject is held."""
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
                         "ticket_cf_dsar_request_type": "Access", "ticket_tags": "dsar-access",
                         "ticket_cf_dsar_language": "nb"}}]}}}}})
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
        settings.freshdesk_type_field, settings.freshdesk_subject_field, settings.freshdesk_tag_prefix,
        settings.freshdesk_language_field))
    return await run_in_threadpool(_submit_ticket, rt, wake, intake, "freshdesk")


@router.post("/v1/events/account-deleted", status_code=202, response_model=Scheduled, tags=["webhooks"],
             responses=ERRORS, openapi_extra=json_body(AccountDeletedBody))
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
