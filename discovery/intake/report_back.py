"""Completion hook: tell the ticket's side how a request ended.

Two channels, each used when it applies: a signed POST of the outcome to the request's callback
URL (or the configured default for webhook tickets), and for Freshdesk tickets a private note on
the ticket with the outcome and the person's download link. Both are tried; any failure is raised
afterwards so pipeline.run_completion_hooks logs and audits it. Neither carries the subject's e-mail.
The note is written in the request's language (the agent forwards the link to the person); the callback's
JSON is for machines and carries the language code. A callback goes only where `api.callback_allow` lets it:
the address is resolved and checked as the connection is made, and redirects are not followed
(discovery/engine/callbacks.py).
"""

from __future__ import annotations

import html
from datetime import datetime
from typing import Any

import orjson
import structlog

from connectors.base import N_
from connectors.freshdesk import FreshdeskClient
from connectors.http import HttpClient, RetryPolicy
from connectors.redact import redact, safe_url
from discovery.engine.callbacks import CallbackPolicy
from discovery.engine.callbacks import session as callback_session
from discovery.engine.ledger import Request, RequestStatus, Task
from discovery.engine.pipeline import audit
from discovery.engine.runtime import Runtime
from discovery.i18n.languages import SOURCE, language
from discovery.intake.download_tokens import NoPublicUrl, download_link
from discovery.intake.tickets import SIGNATURE_HEADER, sign

log = structlog.get_logger(__name__)

WEBHOOK_SOURCES = ("ticket", "freshdesk")
_FINISHED = (RequestStatus.COMPLETED, RequestStatus.COMPLETED_WITH_ERRORS)


class ReportBackError(Exception):
    pass


def report_back(rt: Runtime, request_id: str) -> None:
    with rt.sessions() as s:
        req = s.get(Request, request_id)
        if req is None:
            return
        tasks = list(req.tasks)
    api = rt.settings.api
    callback = req.callback_url or (api.callback_url if req.source in WEBHOOK_SOURCES else "")
    to_freshdesk = req.source == "freshdesk" and bool(req.ticket_ref) and bool(api.freshdesk_domain)
    if not callback and not to_freshdesk:
        return
    now = rt.clock()
    done: dict[str, Any] = {}
    problems: list[str] = []
    link = None
    if req.bundle_path and req.status in _FINISHED:
        try:
            link = download_link(rt.settings, req.id, now)
        except NoPublicUrl as exc:  # reported without a link, and the reason recorded: the agent sends it by hand
            problems.append(str(exc))
    outcome = outcome_of(req, tasks, link, req.language or rt.settings.requests.language)
    if callback:
        try:
            done["callback_status"] = post_callback(rt, callback, outcome, now)
        except Exception as exc:
            problems.append(f"callback {safe_url(callback)}: {_why(exc)}")
    if to_freshdesk:
        try:
            client = FreshdeskClient.from_settings(api.freshdesk_domain, api.freshdesk_api_key_env, rt.env)
            try:
                done["freshdesk_note"] = client.add_note(str(req.ticket_ref), note_html(outcome))
            finally:
                client.close()
        except Exception as exc:
            problems.append(f"freshdesk note: {_why(exc)}")
    with rt.sessions.begin() as s:
        audit(s, "request.reported", "worker", s.get(Request, request_id), **done,
              callback=safe_url(callback) if callback else None, problems=problems or None)
    log.info("request.reported", request_id=request_id, channels=sorted(done), problems=len(problems))
    if problems:
        raise ReportBackError("; ".join(problems))


def _why(exc: Exception) -> str:
    return redact(str(exc))[:300] or type(exc).__name__


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
    secret = rt.env.get(rt.settings.api.callback_secret_env, "")
    if not secret:
        raise ReportBackError(f"no callback secret in {rt.settings.api.callback_secret_env}; not sending unsigned")
    policy = CallbackPolicy.from_settings(rt.settings.api)
    policy.check(url)  # refused before anything is signed; the session checks again as it connects
    body = orjson.dumps(outcome)  # HttpClient serialises `json=` with orjson.dumps too: the signed bytes are sent
    client = HttpClient("callback", url, retry=RetryPolicy(attempts=4), timeout=(5.0, 15.0),
                        session=callback_session(policy))
    try:
        resp = client.request("POST", url, json=outcome, ok=(200, 201, 202, 204),
                              headers={SIGNATURE_HEADER: sign(secret.encode(), body, now)})
        return resp.status_code
    finally:
        client.close()


TYPE_NAME = {"access": N_("access request"), "portability": N_("portability request"),
             "erasure": N_("erasure request"), "restriction": N_("restriction request"),
             "lift_restriction": N_("request to lift a restriction")}
STATUS_NAME = {"completed": N_("completed"), "completed_with_errors": N_("completed with errors"),
               "failed": N_("failed"), "done": N_("done"), "unsupported": N_("not possible in this system"),
               "awaiting_manual": N_("waiting for a manual step"), "denied": N_("refused"),
               "cancelled": N_("cancelled")}
BASIS_NAME = {"unfounded_or_excessive": N_("manifestly unfounded or excessive (Art. 12(5))"),
              "identity_not_verified": N_("the requester's identity could not be verified (Art. 12(6))")}


def note_html(outcome: dict[str, Any]) -> str:
    """The private note on the ticket, in the request's language; system names and errors stay as recorded."""
    req = outcome["request"]
    lang = language(req.get("language") or SOURCE)
    _ = lang.gettext

    def tr(message: str, **parts: str) -> str:  # the translated text escaped, then the HTML parts put in
        return html.escape(_(message)).format(**parts)

    def word(names: dict[str, str], key: str) -> str:
        return html.escape(_(names[key]) if key in names else key)

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
