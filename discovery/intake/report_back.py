"""Report-back: tell the ticket's side what happened to its request, through the outbox (discovery/intake/outbox.py).

Two channels, each used when it applies: a signed POST of the outcome to the request's callback URL (or the
configured default for webhook tickets), and for Freshdesk tickets a private note on the ticket. What is to be said is
queued in the ledger's outbox in the transaction of the state change (`REPORTER`, registered with the engine), then
sent at once and, when that fails, retried with backoff until delivered or expired (days, not seconds).

- request.finished (completed, failed, denied, cancelled): the note with the outcome and the person's download link,
  and the callback (machines: JSON with the language code, signed when sent);
- request.held (the requester is not the subject: nothing runs until an operator verifies) and request.extended
  (Art. 12(3): the new deadline and why): a note only; callbacks keep their one event, the outcome.

Neither carries the subject's e-mail. Notes are written in the request's language (the agent forwards the link to the
person). A callback goes only where `api.callback_allow` lets it: checked when sent, the address resolved and checked
as the connection is made, redirects not followed (discovery/engine/callbacks.py). `report_back` is the completion hook
(workers/app.setup): it queues the outcome if the event did not (a request finished before the outbox existed) and
sends the request's rows now; what failed is audited and raised, so pipeline.run_completion_hooks records it too.
"""

from __future__ import annotations

import html
from datetime import datetime
from typing import Any

import orjson
import sqlalchemy as sa
import structlog
from sqlalchemy.orm import Session

from connectors.base import N_
from connectors.redact import safe_url
from discovery.engine import pipeline
from discovery.engine.ledger import OPEN_STATUSES, OutboxMessage, OutboxStatus, Request, RequestStatus, Task
from discovery.engine.pipeline import audit
from discovery.engine.runtime import Ended, Runtime
from discovery.i18n.languages import SOURCE, Language, language
from discovery.intake import outbox
from discovery.intake.download_tokens import NoPublicUrl, download_link

log = structlog.get_logger(__name__)

WEBHOOK_SOURCES = ("ticket", "freshdesk")
_FINISHED = (RequestStatus.COMPLETED, RequestStatus.COMPLETED_WITH_ERRORS)
HELD, EXTENDED, FINISHED = "request.held", "request.extended", "request.finished"


class ReportBackError(Exception):
    pass


def callback_target(rt: Runtime, req: Request | Ended) -> str:
    """The request's callback URL, or the configured default for webhook tickets; empty: no callback."""
    return req.callback_url or (rt.settings.api.callback_url if req.source in WEBHOOK_SOURCES else "")


def note_target(rt: Runtime, req: Request | Ended) -> str | None:
    """The Freshdesk ticket id a note goes to; None: not a Freshdesk ticket, or no Freshdesk configured."""
    if req.source == "freshdesk" and req.ticket_ref and rt.settings.api.freshdesk_domain:
        return str(req.ticket_ref)
    return None


def has_target(rt: Runtime, req: Request | Ended) -> bool:
    """Anywhere to report this request to (a callback or a Freshdesk ticket), decided without a query."""
    return bool(callback_target(rt, req) or note_target(rt, req))


def _link(rt: Runtime, req: Request, now: datetime) -> tuple[tuple[str, datetime] | None, str | None]:
    """The person's download link (or why there is none) for a finished request with a bundle."""
    if not (req.bundle_path and req.status in _FINISHED):
        return None, None
    try:
        return download_link(rt.settings, req.id, now), None
    except NoPublicUrl as exc:  # reported without a link, and the reason recorded: the agent sends it by hand
        return None, str(exc)


def enqueue(s: Session, rt: Runtime, req: Request, event: str, details: dict[str, Any]) -> None:
    """Queue what `event` tells the ticket's side, in the caller's transaction (pipeline.report)."""
    note, callback = note_target(rt, req), callback_target(rt, req)
    if not note and not (callback and event == FINISHED):
        return
    code = req.language or rt.settings.requests.language
    if event == FINISHED:
        tasks = list(s.scalars(sa.select(Task).where(Task.request_id == req.id).order_by(Task.id)
                               .execution_options(populate_existing=True)))  # as just updated in this transaction
        outcome = outcome_of(req, tasks, _link(rt, req, rt.clock())[0], code)
        if callback:
            outbox.add(s, rt, req, outbox.CALLBACK, event, callback, orjson.dumps(outcome).decode())
        if note:
            outbox.add(s, rt, req, outbox.NOTE, event, note, note_html(outcome))
    elif note and event == HELD:
        outbox.add(s, rt, req, outbox.NOTE, event, note, held_note_html(_brief(req, code)))
    elif note and event == EXTENDED:
        outbox.add(s, rt, req, outbox.NOTE, event, note, extended_note_html(
            _brief(req, code), int(details.get("days") or 0), str(details.get("reason") or "")))


def _brief(req: Request, code: str) -> dict[str, Any]:
    return {"id": req.id, "type": req.type, "due_at": req.due_at.isoformat(), "language": code}


class _Reporter:
    """The engine's side of reporting back (pipeline.Reporter)."""

    def wants(self, rt: Runtime, req: Request | Ended) -> bool:
        return has_target(rt, req)

    def enqueue(self, s: Session, rt: Runtime, req: Request, event: str, details: dict[str, Any]) -> None:
        enqueue(s, rt, req, event, details)

    def send(self, rt: Runtime, request_id: str) -> None:
        outbox.deliver(rt, request_id=request_id, force=True)


REPORTER = _Reporter()
pipeline.register_reporter(REPORTER)  # every process that reports back imports this module (workers/app.setup)


def report_back(rt: Runtime, request: Ended | str) -> None:
    """Completion hook: queue the outcome if nothing did, then send the request's report-back now. A request with
    nowhere to report to (no callback, not a Freshdesk ticket) costs nothing: decided from `Ended`, no query."""
    ended = pipeline.ended_of(rt, request)
    if not has_target(rt, ended):
        return
    request_id = ended.id
    now = rt.clock()
    with rt.sessions.begin() as s:
        req = s.get(Request, request_id)
        if req is None:
            return
        callback = callback_target(rt, req)
        if not callback and not note_target(rt, req):
            return
        problems: list[str] = []
        if req.status not in OPEN_STATUSES:
            link_problem = _link(rt, req, now)[1]
            if link_problem:
                problems.append(link_problem)
            queued = s.scalar(sa.select(sa.func.count()).select_from(OutboxMessage).where(
                OutboxMessage.request_id == request_id, OutboxMessage.event == FINISHED,
                OutboxMessage.created_at >= (req.completed_at or req.updated_at)))
            if not queued:
                enqueue(s, rt, req, FINISHED, {})
    sent = outbox.deliver(rt, request_id=request_id, force=True)
    done: dict[str, Any] = {}
    for a in sent.attempts:
        channel = f"callback {safe_url(a.target)}" if a.kind == outbox.CALLBACK else "freshdesk note"
        if a.status == OutboxStatus.DELIVERED:
            done["callback_status" if a.kind == outbox.CALLBACK else "freshdesk_note"] = \
                a.http_status if a.kind == outbox.CALLBACK else a.note_id
        elif a.status == OutboxStatus.PENDING:
            problems.append(f"{channel}: {a.error} (retried later)")
        else:
            problems.append(f"{channel}: {a.error or a.status} ({a.status})")
    with rt.sessions.begin() as s:
        audit(s, "request.reported", "worker", s.get(Request, request_id), **done,
              callback=safe_url(callback) if callback else None, problems=problems or None)
    log.info("request.reported", request_id=request_id, channels=sorted(done), problems=len(problems))
    if problems:
        raise ReportBackError("; ".join(problems))


def outcome_of(req: Request, tasks: list[Task], link: tuple[str, datetime] | None,
               language_code: str = SOURCE) -> dict[str, Any]:
    return {
        "event": "request.finished",
        "request": {"id": req.id, "type": req.type, "status": req.status, "ticket": req.ticket_ref,
                    "language": language_code,
                    "source": req.source, "received_at": req.received_at.isoformat(),
                    "due_at": req.due_at.isoformat(),
                    "completed_at": req.completed_at.isoformat() if req.completed_at else None,
                    "error": req.error,
                    # an operator's denial or cancellation (discovery/engine/lifecycle.py): why, and on what basis
                    "reason": req.close_reason, "basis": req.close_basis},
        "tasks": [{"system": t.system, "action": t.action, "status": t.status, "error": t.error} for t in tasks],
        "download": {"url": link[0], "expires_at": link[1].isoformat()} if link else None,
    }


def post_callback(rt: Runtime, url: str, outcome: dict[str, Any], now: datetime) -> int:
    """POST an outcome to a callback URL at once, signed; the allow-list is checked first (outbox.send_callback)."""
    return outbox.send_callback(rt, url, orjson.dumps(outcome), now)


TYPE_NAME = {"access": N_("access request"), "portability": N_("portability request"),
             "erasure": N_("erasure request"), "restriction": N_("restriction request"),
             "lift_restriction": N_("request to lift a restriction")}
STATUS_NAME = {"completed": N_("completed"), "completed_with_errors": N_("completed with errors"),
               "failed": N_("failed"), "done": N_("done"), "unsupported": N_("not possible in this system"),
               "awaiting_manual": N_("waiting for a manual step"), "denied": N_("refused"),
               "cancelled": N_("cancelled")}
BASIS_NAME = {"unfounded_or_excessive": N_("manifestly unfounded or excessive (Art. 12(5))"),
              "identity_not_verified": N_("the requester's identity could not be verified (Art. 12(6))")}


class _Html:
    """Texts of a note in one language: each translated text escaped, then its HTML parts put in."""

    def __init__(self, code: str) -> None:
        self.lang: Language = language(code or SOURCE)

    def tr(self, message: str, **parts: str) -> str:
        return html.escape(self.lang.gettext(message)).format(**parts)

    def tr_n(self, singular: str, plural: str, n: int, **parts: str) -> str:
        return html.escape(self.lang.ngettext(singular, plural, n)).format(**parts)

    def word(self, names: dict[str, str], key: str) -> str:
        return html.escape(self.lang.gettext(names[key]) if key in names else key)


def note_html(outcome: dict[str, Any]) -> str:
    """The private note on the ticket, in the request's language; system names and errors stay as recorded."""
    req = outcome["request"]
    h = _Html(req.get("language") or SOURCE)
    tr, word, lang = h.tr, h.word, h.lang
    e = html.escape
    request_id = "<code>" + e(req["id"]) + "</code>"
    status = "<b>" + word(STATUS_NAME, req["status"]) + "</b>"
    lines = ["<p>" + tr("{dsar}: {type} {id} finished: {status}.", dsar="<b>dsar</b>",
                        type=word(TYPE_NAME, req["type"]), id=request_id, status=status) + "</p>"]
    if outcome["download"]:
        d = outcome["download"]
        link = '<a href="' + e(d["url"]) + '">' + e(d["url"]) + "</a>"
        lines.append("<p>" + tr("Download link for the person (valid until {until}): {link}",
                                until=e(lang.datetime(d["expires_at"])), link=link) + "</p>")
    items = "".join(f"<li>{e(t['system'])} {e(t['action'])}: {word(STATUS_NAME, t['status'])}"
                    + (f" ({e(t['error'])})" if t["error"] else "") + "</li>" for t in outcome["tasks"])
    if items:
        lines.append(f"<ul>{items}</ul>")
    if req["error"]:
        lines.append("<p>" + tr("Errors: {errors}", errors=e(req["error"])) + "</p>")
    if req.get("basis"):
        lines.append("<p>" + tr("Grounds: {basis}", basis=word(BASIS_NAME, req["basis"])) + "</p>")
    if req.get("reason"):  # the operator's own words, not translated
        lines.append("<p>" + tr("Reason: {reason}", reason=e(req["reason"])) + "</p>")
    return "".join(lines)


def held_note_html(req: dict[str, Any]) -> str:
    """The note when a request waits for the requester's identity (the requester is not the person)."""
    h = _Html(req.get("language") or SOURCE)
    request_id = "<code>" + html.escape(req["id"]) + "</code>"
    return ("<p>" + h.tr("{dsar}: {type} {id} is on hold: the requester is not the person it is about. Nothing is "
                         "searched or changed until an operator has verified that the requester may act for them, or "
                         "has refused the request.", dsar="<b>dsar</b>", type=h.word(TYPE_NAME, req["type"]),
                         id=request_id) + "</p>"
            + "<p>" + h.tr("Deadline: {date}", date=html.escape(h.lang.date(req["due_at"]))) + "</p>")


def extended_note_html(req: dict[str, Any], days: int, reason: str) -> str:
    """The note when the deadline is extended (Art. 12(3)): by how much, to when, and why."""
    h = _Html(req.get("language") or SOURCE)
    request_id = "<code>" + html.escape(req["id"]) + "</code>"
    lines = ["<p>" + h.tr_n("{dsar}: the deadline of {type} {id} is extended by {days} day, to {date} (Art. 12(3)). "
                            "The person must be told of the extension and why within one month of the request.",
                            "{dsar}: the deadline of {type} {id} is extended by {days} days, to {date} (Art. 12(3)). "
                            "The person must be told of the extension and why within one month of the request.",
                            days, dsar="<b>dsar</b>", type=h.word(TYPE_NAME, req["type"]), id=request_id,
                            days=html.escape(h.lang.number(days)),
                            date="<b>" + html.escape(h.lang.date(req["due_at"])) + "</b>") + "</p>"]
    if reason:  # the operator's own words, not translated
        lines.append("<p>" + h.tr("Reason: {reason}", reason=html.escape(reason)) + "</p>")
    return "".join(lines)
