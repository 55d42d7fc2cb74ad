"""Tickets from a helpdesk: the generic webhook shape, HMAC signatures, and the Freshdesk adapter.

Generic webhook (`POST /v1/tickets`), JSON:

    {"ticket_id": "4711", "requester_email": "jane@example.com",
     "subject_email": "optional, when the person asked about is not the requester",
     "type": "access | portability | erasure | restriction | lift_restriction",
     "callback_url": "optional https:// URL for the outcome",
     "language": "optional: what the person is written to in, e.g. nb or en"}

signed in the header `X-Dsar-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<raw body>")>`.
The timestamp bounds replays; the same scheme signs account-service events and dsar's own callbacks.

Freshdesk (`POST /v1/tickets/freshdesk`): an automation rule's "Trigger webhook" action with a
custom header holding a shared secret and a JSON body of ticket placeholders (docs/architecture.md
shows the body to paste). Freshdesk signs nothing itself, hence the shared secret.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from discovery.engine.ledger import RequestType
from discovery.i18n.languages import UnknownLanguage, language_code

SIGNATURE_HEADER = "X-Dsar-Signature"
_SIG = re.compile(r"^t=(\d{1,12}),v1=([0-9a-f]{64})$")


class SignatureError(Exception):
    """The request is not signed by the holder of the secret (HTTP 401)."""


class TicketError(ValueError):
    """A ticket that cannot become a request: the message says what is missing (HTTP 422)."""


def sign(secret: bytes, body: bytes, at: datetime) -> str:
    t = int(at.timestamp())
    mac = hmac.new(secret, f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def verify_signature(secret: bytes, body: bytes, header: str | None, now: datetime, tolerance_s: int) -> None:
    if not header:
        raise SignatureError(f"missing {SIGNATURE_HEADER} header")
    match = _SIG.match(header.strip())
    if not match:
        raise SignatureError(f"malformed {SIGNATURE_HEADER} header (expected t=<unix>,v1=<hex>)")
    t = int(match.group(1))
    expected = hmac.new(secret, f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, match.group(2)):
        raise SignatureError("signature does not match the body")
    if abs(now.timestamp() - t) > tolerance_s:
        raise SignatureError(f"signature timestamp is more than {tolerance_s}s away from now (replay?)")


def check_shared_secret(expected: str, presented: str | None, header: str) -> None:
    if not presented or not hmac.compare_digest(expected.encode(), presented.encode()):
        raise SignatureError(f"missing or wrong {header} header")


def request_type(value: str) -> str:
    """'Erasure', 'lift-restriction', 'Lift restriction' -> the RequestType value, or TicketError."""
    key = re.sub(r"[\s-]+", "_", value.strip().lower())
    key = _ALIASES.get(key, key)
    try:
        return RequestType(key).value
    except ValueError:
        raise TicketError(f"unknown request type '{value[:40]}' "
                          f"(one of: {', '.join(t.value for t in RequestType)})") from None


_ALIASES = {"deletion": "erasure", "delete": "erasure", "data_portability": "portability",
            "restrict": "restriction", "lift": "lift_restriction", "unrestrict": "lift_restriction"}


class TicketWebhook(BaseModel):
    """The generic ticket webhook body (unknown keys are ignored: helpdesks add their own)."""

    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True, json_schema_extra={"examples": [
        {"ticket_id": "4711", "requester_email": "jane@example.com", "type": "access"},
        {"ticket_id": "4712", "requester_email": "lawyer@example.net", "subject_email": "jane@example.com",
         "type": "erasure", "callback_url": "https://helpdesk.example.net/dsar"}]})

    ticket_id: str = Field(min_length=1, max_length=128, description="The helpdesk's ticket id")
    requester_email: str = Field(min_length=3, max_length=320, description="Who wrote the ticket",
                                 json_schema_extra={"format": "email"})
    subject_email: str | None = Field(None, max_length=320, json_schema_extra={"format": "email"},
                                      description="The person the request is about, when not the requester")
    type: str = Field(min_length=1, max_length=40, description="Request type, e.g. access or erasure")
    callback_url: str | None = Field(None, max_length=1024, description="Where dsar posts the outcome (signed)")
    language: str | None = Field(None, max_length=35, description=(
        "The person's language (nb, en, nb-NO, ...); unknown or omitted: the settings' requests.language"))

    @field_validator("callback_url")
    @classmethod
    def _http(cls, value: str | None) -> str | None:
        if value and not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return value or None


@dataclass(frozen=True)
class TicketIntake:
    """What any helpdesk's ticket becomes: enough for pipeline.submit."""

    ticket_id: str
    type: str
    subject_email: str
    requester_email: str
    callback_url: str | None = None
    language: str | None = None  # a code of discovery.i18n, or None: the default


def ticket_language(value: str | None) -> str | None:
    """A helpdesk's language field as a code we write in; one we do not write in falls back to the default:
    the person still gets an answer, which matters more than its language."""
    try:
        return language_code(value) if value else None
    except UnknownLanguage:
        return None


def from_webhook(body: TicketWebhook) -> TicketIntake:
    return TicketIntake(ticket_id=body.ticket_id, type=request_type(body.type),
                        subject_email=body.subject_email or body.requester_email,
                        requester_email=body.requester_email, callback_url=body.callback_url,
                        language=ticket_language(body.language))


@dataclass(frozen=True)
class FreshdeskFields:
    type_field: str = "cf_dsar_request_type"
    subject_field: str = "cf_dsar_subject_email"
    tag_prefix: str = "dsar-"
    language_field: str = "cf_dsar_language"


def from_freshdesk(payload: Any, fields: FreshdeskFields) -> TicketIntake:
    """Read a Freshdesk webhook body; keys may carry Freshdesk's `ticket_` prefix or not.

    Accepts `{"freshdesk_webhook": {...}}` (what Freshdesk's "simple" mode sends) or the flat object.
    The type comes from the ticket field `fields.type_field`, else from a tag `<tag_prefix><type>`; the
    language from the ticket field `fields.language_field` (optional).
    """
    data = payload.get("freshdesk_webhook", payload) if isinstance(payload, Mapping) else None
    if not isinstance(data, Mapping):
        raise TicketError("body must be a JSON object (optionally wrapped in 'freshdesk_webhook')")
    ticket_id = _field(data, "ticket_id", "id")
    if not ticket_id or not ticket_id.isdigit() or len(ticket_id) > 20:
        raise TicketError("ticket_id must be the Freshdesk ticket number")
    requester = _field(data, "requester_email", "ticket_requester_email", "ticket_contact_email", "contact_email")
    if not requester:
        raise TicketError("requester_email is missing")
    subject = _field(data, fields.subject_field, f"ticket_{fields.subject_field}", "subject_email")
    rtype = _field(data, fields.type_field, f"ticket_{fields.type_field}", "type")
    if not rtype:
        rtype = _type_from_tags(data.get("ticket_tags", data.get("tags")), fields.tag_prefix)
    if not rtype:
        raise TicketError(f"no request type: set the ticket field '{fields.type_field}' "
                          f"or a tag '{fields.tag_prefix}<type>'")
    language = _field(data, fields.language_field, f"ticket_{fields.language_field}", "language") \
        if fields.language_field else None
    return TicketIntake(ticket_id=ticket_id, type=request_type(rtype), subject_email=subject or requester,
                        requester_email=requester, language=ticket_language(language))


def _field(data: Mapping[str, Any], *names: str) -> str | None:
    for name in names:
        value = data.get(name)
        if isinstance(value, int | str) and not isinstance(value, bool):
            text = str(value).strip()
            # An unknown placeholder reaches us unreplaced ("{{ticket.cf_x}}"): treat it as empty.
            if text and not text.startswith("{{"):
                return text[:320]
    return None


def _type_from_tags(tags: Any, prefix: str) -> str | None:
    if isinstance(tags, str):
        tags = tags.split(",")
    if not isinstance(tags, list):
        return None
    for tag in tags:
        if isinstance(tag, str) and tag.strip().lower().startswith(prefix):
            return tag.strip()[len(prefix):]
    return None
