"""`dsar` commands for a request's lifecycle: requests (the list), deny, cancel, retry, audit.

The rules live in discovery/engine/lifecycle.py, shared with the HTTP API and the console. A wrong state
(denying a cancelled request, retrying a completed one) exits 8; an unknown id 4; bad input 2. Every action is
audited with --actor, which defaults to the OS user.
"""

from __future__ import annotations

from typing import Any

import click

from discovery.engine import lifecycle
from discovery.engine.ledger import RequestStatus, RequestType
from workers.cli.common import (
    EXIT_UNAVAILABLE,
    RecordingWakeups,
    actor_or_user,
    emit,
    errors_to_exit,
    fail,
    main,
    runtime,
    wait_for,
)
from workers.inprocess import in_process_worker_if_embedded

_ACTOR = click.option("--actor", help="Who does this, kept in the audit log (default: the OS user).")
_JSON = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
_BASES = [b.replace("_", "-") for b in lifecycle.DENIAL_BASES]


@main.command("requests")
@click.option("--status", type=click.Choice(["open", *RequestStatus]), help="Only this status (open: every open one).")
@click.option("--type", "rtype", type=click.Choice([t.value.replace("_", "-") for t in RequestType]),
              help="Only this request type.")
@click.option("--overdue", is_flag=True, help="Only open requests past their deadline, most late first.")
@click.option("--ticket", help="Only the request(s) of this ticket reference.")
@click.option("--page", type=click.IntRange(1), default=1, show_default=True)
@click.option("--per-page", type=click.IntRange(1, lifecycle.MAX_PER_PAGE), default=50, show_default=True)
@click.option("--show-subject", is_flag=True, help="Show the full e-mail (masked otherwise).")
@_JSON
@click.pass_context
def requests_cmd(ctx: click.Context, status: str | None, rtype: str | None, overdue: bool, ticket: str | None,
                 page: int, per_page: int, show_subject: bool, as_json: bool) -> None:
    """List requests, newest first: id, type, status, subject (masked), ticket, received, due, days left."""
    with errors_to_exit():
        found = lifecycle.list_requests(runtime(ctx), status=status, type=rtype.replace("-", "_") if rtype else None,
                                        overdue=overdue, ticket=ticket, page=page, per_page=per_page)
        data = {"requests": [i.to_dict(full_subject=show_subject) for i in found.items], "total": found.total,
                "page": found.page, "per_page": found.per_page, "pages": found.pages}

        def human() -> None:
            for i in found.items:
                left = "" if i.days_left is None else f"{i.days_left:>4}d" + (" LATE" if i.overdue else "")
                click.echo(f"{i.id}  {i.type:<16} {i.status:<21} {i.subject if show_subject else i.subject_masked:<24}"
                           f" {i.ticket or '-':<12} {i.received_at:%Y-%m-%d}  due {i.due_at:%Y-%m-%d} {left}")
            click.echo(f"page {found.page} of {found.pages}, {found.total} request(s)", err=True)

        emit(data, as_json, human)


def _closed(req: Any) -> dict[str, Any]:
    return {"id": req.id, "status": req.status, "reason": req.close_reason, "basis": req.close_basis,
            "completed_at": req.completed_at.isoformat() if req.completed_at else None}


@main.command("deny")
@click.argument("request_id")
@click.option("--basis", required=True, type=click.Choice(_BASES),
              help="unfounded-or-excessive: Art. 12(5); identity-not-verified: the requester's identity was not "
                   "confirmed.")
@click.option("--reason", required=True, help="Why (recorded, audited and reported back to the ticket).")
@_ACTOR
@_JSON
@click.pass_context
def deny_cmd(ctx: click.Context, request_id: str, basis: str, reason: str, actor: str | None, as_json: bool) -> None:
    """Refuse an open request; tasks not started are cancelled and the ticket hears why."""
    with errors_to_exit():
        who = actor_or_user(actor)
        req = lifecycle.deny_request(runtime(ctx), request_id, reason, basis.replace("-", "_"), who)
        emit(_closed(req), as_json, lambda: click.echo(f"request {req.id} denied ({req.close_basis})", err=True))


@main.command("cancel")
@click.argument("request_id")
@click.option("--reason", required=True, help="E.g. how the person withdrew (recorded and reported back).")
@_ACTOR
@_JSON
@click.pass_context
def cancel_cmd(ctx: click.Context, request_id: str, reason: str, actor: str | None, as_json: bool) -> None:
    """The person withdrew: nothing more runs; work already done stays in the receipts."""
    with errors_to_exit():
        who = actor_or_user(actor)
        req = lifecycle.cancel_request(runtime(ctx), request_id, reason, who)
        emit(_closed(req), as_json, lambda: click.echo(f"request {req.id} cancelled", err=True))


@main.command("retry")
@click.argument("request_id")
@click.option("--system", "systems", multiple=True, metavar="NAME",
              help="Only this failed system (repeatable); default: every failed one.")
@click.option("--timeout", type=float, default=600.0, show_default=True,
              help="Seconds to wait when the broker is embedded.")
@_ACTOR
@_JSON
@click.pass_context
def retry_cmd(ctx: click.Context, request_id: str, systems: tuple[str, ...], timeout: float, actor: str | None,
              as_json: bool) -> None:
    """Run the failed systems of a finished request again: same request, same deadline.

    Exports of every system run again too (their staged files went with the first bundle), so the new bundle
    shows what every system holds now; erasures and restrictions that succeeded are not repeated."""
    with errors_to_exit():
        from workers import app
        from workers.actors import WAKE

        who = actor_or_user(actor)
        rt = runtime(ctx)
        with in_process_worker_if_embedded(app.is_embedded()):
            wake = RecordingWakeups(WAKE)
            done = lifecycle.retry_request(rt, wake, request_id, list(systems) or None, who)
            data = {"id": request_id, "status": done.request.status, "due_at": done.request.due_at.isoformat(),
                    "tasks": done.tasks, "relocated": done.relocated}
            if wake.failed is not None:
                emit(data, as_json, lambda: None)
                fail(f"broker unreachable ({type(wake.failed).__name__}): request {request_id} is queued in the "
                     "ledger; the sweeper will pick it up when the broker is back", EXIT_UNAVAILABLE)
            if app.is_embedded():
                data["status"] = wait_for(rt, request_id, timeout, show=not as_json)

            def human() -> None:
                for system, error in done.relocated.items():
                    click.echo(f"  {system:<14} searched again: {error or 'fine'}", err=True)
                for t in done.tasks:
                    click.echo(f"  {t['system']:<14} {t['action']:<17} again ({t['why']})", err=True)
                click.echo(f"request {request_id} retried: {data['status']}", err=True)

            emit(data, as_json, human)


@main.command("audit")
@click.argument("request_id")
@_JSON
@click.pass_context
def audit_cmd(ctx: click.Context, request_id: str, as_json: bool) -> None:
    """Who did what to a request, when, with what note; then the next action it waits for."""
    with errors_to_exit():
        rt = runtime(ctx)
        events = lifecycle.audit_trail(rt, request_id)
        data = {"id": request_id, "events": events, "next_actions": lifecycle.next_actions(rt, request_id)}

        def human() -> None:
            for e in events:
                extra = {k: v for k, v in e["details"].items() if k not in ("note", "reason")}
                click.echo(f"{e['at'][:19].replace('T', ' ')}  {e['event']:<28} {e['actor']:<20}"
                           + (f" {e['note']}" if e["note"] else "")
                           + (f"  {_short(extra)}" if extra else ""))
            for action in data["next_actions"]:
                click.echo(f"Next: {action}")

        emit(data, as_json, human)


def _short(details: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in details.items())[:200]
