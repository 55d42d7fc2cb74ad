"""`dsar` commands for requests: request, status, download, confirm."""

from __future__ import annotations

import os
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import click

from discovery.engine import lifecycle, pipeline
from discovery.engine.ledger import RequestStatus, RequestType
from discovery.intake import outbox
from workers.cli.common import (
    EXIT_CONFIG,
    EXIT_FAILED,
    EXIT_NOT_READY,
    EXIT_UNAVAILABLE,
    RecordingWakeups,
    actor_or_user,
    emit,
    errors_to_exit,
    fail,
    load_request,
    main,
    runtime,
    status_data,
    wait_for,
)
from workers.inprocess import in_process_worker_if_embedded

# -- request ---------------------------------------------------------------------------------

@main.command("request")
@click.argument("request_type", type=click.Choice([t.value.replace("_", "-") for t in RequestType]))
@click.option("--email", required=True, help="The person's e-mail address.")
@click.option("--ticket", help="Support ticket reference.")
@click.option("--wait/--no-wait", default=False, help="Wait for the result, showing progress.")
@click.option("--timeout", type=float, default=600.0, show_default=True, help="Seconds to wait with --wait.")
@click.option("--dry-run", is_flag=True, help="Locate and plan only: show what would be done, change nothing.")
@click.option("--system", "systems", multiple=True, metavar="NAME",
              help="Only in this system (repeatable); default: every enabled system.")
@click.option("--confirm-others", metavar="REASON",
              help="Go ahead although the change touches records that also name other people (audited).")
@click.option("--language", metavar="CODE",
              help="What the person is written to in: nb or en (default: the settings' requests.language).")
@click.option("--actor", help="Who submits it, kept in the audit log (default: the OS user).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def request_cmd(ctx: click.Context, request_type: str, email: str, ticket: str | None, wait: bool, timeout: float,
                dry_run: bool, systems: tuple[str, ...], confirm_others: str | None, language: str | None,
                actor: str | None, as_json: bool) -> None:
    """Submit an access, portability, erasure, restriction or lift-restriction request.

    An erasure or restriction whose records also name other people is refused for that system
    (exit 1 on --dry-run) unless --confirm-others gives the reason it may go ahead. A --dry-run in which a
    system could not be searched names it and exits 1.
    """
    rtype = request_type.replace("-", "_")
    scope = list(systems) or None
    with errors_to_exit():
        who = actor_or_user(actor)  # as every command that changes something: a blank --actor is refused first
        from connectors.emails import normalise_email

        normalise_email(email)  # refuse bad input before touching any service
        rt = runtime(ctx)
        if dry_run:
            found, steps = pipeline.dry_run(rt, rtype, email, scope, confirm_others)
            report = pipeline.plan_report(found, steps)
            data = {"dry_run": True, "type": rtype, "systems": scope, "rounds": found.rounds,
                    "identifiers": report["identifiers"], "locate_errors": report["locate_errors"],
                    "identifiers_refused": report["identifiers_refused"], "refused": report["refused"],
                    "reach": report["reach"], "plan": report["steps"]}
            emit(data, as_json, lambda: _print_plan(data))
            if data["locate_errors"] and not as_json:
                click.echo("Locate failed: " + ", ".join(data["locate_errors"]) + ". The plan acts on those systems "
                           "with the identifiers known; a request would end completed_with_errors.", err=True)
            if data["refused"] or data["locate_errors"]:
                sys.exit(EXIT_FAILED)
            return
        from workers import app
        from workers.actors import WAKE

        with in_process_worker_if_embedded(app.is_embedded()):
            wake = RecordingWakeups(WAKE)
            submitted = pipeline.submit(rt, wake, rtype, email, ticket, actor=who, systems=scope,
                                        confirm_others=confirm_others, language=language)
            req = submitted.request
            if wake.failed is not None:  # written, but not handed to the broker: say so, and give the id
                data = {"id": req.id, "type": req.type, "status": req.status, "created": submitted.created,
                        "due_at": req.due_at.isoformat(), "queued_in_ledger_only": True}
                emit(data, as_json, lambda: click.echo(req.id))
                fail(f"broker unreachable ({type(wake.failed).__name__}): request {req.id} is queued in the "
                     "ledger; the sweeper will pick it up when the broker is back", EXIT_UNAVAILABLE)
            if not as_json:
                click.echo(("Submitted" if submitted.created else "Already open (same person and type)")
                           + f": request {req.id} ({req.type}), due {req.due_at:%Y-%m-%d}", err=True)
            if wait or app.is_embedded():
                final = wait_for(rt, req.id, timeout, show=not as_json)
                data = status_data(rt, req.id)
                emit(data, as_json, lambda: _print_status(data))
                if final not in (RequestStatus.COMPLETED, RequestStatus.AWAITING_MANUAL):
                    sys.exit(EXIT_FAILED)
            else:
                data = {"id": req.id, "type": req.type, "status": req.status, "created": submitted.created,
                        "due_at": req.due_at.isoformat()}
                emit(data, as_json, lambda: click.echo(req.id))


def _print_status(data: dict[str, Any]) -> None:
    click.echo(f"Request {data['id']}  {data['type']}  status: {data['status']}"
               + (f"  ticket: {data['ticket']}" if data["ticket"] else "")
               + (f"  only: {', '.join(data['systems'])}" if data.get("systems") else ""))
    due = datetime.fromisoformat(data["due_at"])
    left = f"  ({data['days_left']} days left)" if data["days_left"] is not None else ""
    click.echo(f"Received {data['received_at'][:16].replace('T', ' ')} UTC, due {due:%Y-%m-%d}{left}")
    _print_identifiers(data.get("identifiers") or [])
    for system, error in (data.get("locate_errors") or {}).items():
        click.echo(f"  {system:<14} {'locate':<17} {'failed':<16} {error}")
    for t in data["tasks"]:
        detail = ""
        if t["records"] is not None:
            detail = f"{t['records']} records"
        elif t["changed"] is not None:
            detail = ", ".join(f"{k}: {v} changed" for k, v in t["changed"].items()) or "nothing to change"
        if t["error"] and t["status"] != "done":
            detail = t["error"]
        click.echo(f"  {t['system']:<14} {t['action']:<17} {t['status']:<16} {detail}")
        for h in t.get("held") or []:
            click.echo(f"  {'':<14} {'':<17} {'kept':<16} {h['entity']}: {h['records']} under hold until "
                       f"{(h['until'] or 'unknown')[:10]} ({h['reason']})")
        for step in t.get("manual_steps") or []:
            click.echo(f"  {'':<14} {'':<17} {'manual step':<16} {step}")
        for entity, why in (t.get("skipped") or {}).items():
            for reason, n in why.items():
                click.echo(f"  {'':<14} {'':<17} {'left alone':<16} {entity}: {n} record(s), {reason}")
    for c in data.get("confirmed") or []:
        click.echo(f"Confirmed: {c['system']} {c['action']} by {c['by']} at {c['at'][:16].replace('T', ' ')}: "
                   f"{c['note']}")
    if data["bundle"]:
        click.echo(f"Bundle: {data['bundle']}")
    if data["error"]:
        click.echo(f"Errors: {data['error']}")
    if data.get("closed"):
        basis = f" ({data['closed']['basis']})" if data["closed"]["basis"] else ""
        click.echo(f"{str(data['status']).capitalize()}{basis}: {data['closed']['reason']}")
    for r in data.get("report_back") or []:
        click.echo(f"Report-back: {_report_line(r)}")
    for action in data.get("next_actions") or []:
        click.echo(f"Next: {action}")


def _report_line(r: dict[str, Any]) -> str:
    """One outbox row: what, where, its state and, while pending, when it is tried next and why it failed."""
    what = "ticket note" if r["kind"] == "ticket_note" else "callback"
    line = f"{what} ({r['event'].removeprefix('request.')}) to {r['target']}: {r['status']}, {r['attempts']} attempt(s)"
    if r["delivered_at"]:
        line += f", delivered {r['delivered_at'][:16].replace('T', ' ')} UTC"
    if r["next_attempt_at"]:
        line += (f", next {r['next_attempt_at'][:16].replace('T', ' ')} UTC, gives up "
                 f"{r['expires_at'][:16].replace('T', ' ')} UTC")
    if r["last_error"] and r["status"] != "delivered":
        line += f": {r['last_error']}"
    return line


def _print_plan(data: dict[str, Any]) -> None:
    click.echo(f"Dry run ({data['type']}): nothing was changed. Found in {data['rounds']} round(s).")
    _print_identifiers(data["identifiers"])
    for system, error in data["locate_errors"].items():
        click.echo(f"  {system}: locate failed: {error}")
    for system, n in data["identifiers_refused"].items():
        click.echo(f"  {system}: {n} identifier(s) refused: learned without saying where from")
    click.echo("Records found (identifiers on them; not this person's; left alone):")
    for system, entities in data["reach"].items():
        for entity, n in entities.items():
            click.echo(f"  {system:<14} {entity:<16} {n['records']:>6} records  {n['identifiers']:>3} identifiers"
                       f"  {n['not_the_subjects']:>3} not theirs  {n['left_alone']:>4} left alone")
    click.echo("Plan:")
    for s in data["plan"]:
        click.echo(f"  {s['system']:<14} {s['entity']:<16} {s['action']:<17} {s['reason']}")
    if data["refused"]:
        click.echo("Refused: " + ", ".join(r["system"] for r in data["refused"])
                   + ". Check those records, then run again with --confirm-others REASON to go ahead.", err=True)


def _print_identifiers(identifiers: list[dict[str, Any]]) -> None:
    """Each identifier's type and where it came from; values stay out of the terminal's scrollback."""
    click.echo("Identifiers:")
    for i in identifiers:
        click.echo(f"  {i['type']:<22} {'from the request' if i['source'] == 'request' else i['via'] or i['source']}")



# -- status / download / confirm -------------------------------------------------------------

@main.command("status")
@click.argument("request_id")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def status_cmd(ctx: click.Context, request_id: str, as_json: bool) -> None:
    """Show a request: each task's state, the due date and days left."""
    with errors_to_exit():
        from workers.heartbeat import for_status

        rt = runtime(ctx)
        data = status_data(rt, request_id)
        data["workers"] = for_status(rt.settings, data["status"])  # None unless the request waits on workers
        req, _ = load_request(rt, request_id)
        data["closed"] = {"reason": req.close_reason, "basis": req.close_basis} if req.close_reason else None
        data["confirmed"] = lifecycle.confirmations(rt, request_id)  # manual steps: by whom, when, what
        data["next_actions"] = lifecycle.next_actions(rt, request_id)
        data["report_back"] = outbox.state(rt, request_id)  # ticket notes and callbacks: delivered, or why not
        emit(data, as_json, lambda: _print_status(data))
        if data["workers"] and data["workers"]["problem"] and not as_json:
            click.echo(f"Warning: {data['workers']['problem']}; this request waits for a worker.", err=True)


@main.command("download")
@click.argument("request_id")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, writable=True),
              help="Where to write the bundle (ZIP).")
@click.pass_context
def download_cmd(ctx: click.Context, request_id: str, output: str) -> None:
    """Write a finished request's bundle to a file, checked against the SHA-256 recorded when it was made."""
    import hashlib

    from discovery.bundle.archive import (
        ArchiveError,
        ArchiveUnavailable,
        NotInArchive,
        store_for_uri,
    )
    from discovery.engine.bundles import bundle_unavailable

    with errors_to_exit():
        rt = runtime(ctx)
        req, _ = load_request(rt, request_id)
        why = bundle_unavailable(req, rt.clock())
        if why or not req.bundle_path:
            fail(why or "no bundle", EXIT_NOT_READY)
        target = Path(output)
        tmp = target.with_name(f".{target.name}.part")
        sha, size, shown = hashlib.sha256(), 0, 0
        try:
            with store_for_uri(rt.settings, req.bundle_path, rt.env).open_uri(req.bundle_path) as src, \
                    tmp.open("wb") as dst:
                while chunk := src.read(1024 * 1024):
                    dst.write(chunk)
                    sha.update(chunk)
                    size += len(chunk)
                    if size - shown >= 256 * 1024 * 1024:  # a large bundle shows it is moving
                        shown = size
                        click.echo(f"  {size // (1024 * 1024)} MiB of {(req.bundle_size or 0) // (1024 * 1024)}",
                                   err=True)
        except NotInArchive:
            tmp.unlink(missing_ok=True)
            fail(f"the bundle of request {request_id} is no longer in the archive (expired or removed)",
                 EXIT_NOT_READY)
        except ArchiveError as exc:
            tmp.unlink(missing_ok=True)
            fail(str(exc), EXIT_UNAVAILABLE if isinstance(exc, ArchiveUnavailable) else EXIT_CONFIG)
        if req.bundle_sha256 and sha.hexdigest() != req.bundle_sha256:
            tmp.unlink(missing_ok=True)
            fail(f"the bundle of request {request_id} in the archive does not match the SHA-256 recorded when it "
                 "was made; it was not written", EXIT_FAILED)
        os.replace(tmp, target)
        click.echo(f"wrote {target} ({size} bytes)", err=True)


@main.command("confirm")
@click.argument("request_id")
@click.option("--system", required=True, help="The system whose manual step was done.")
@click.option("--note", required=True, help="What was done (kept in the audit log).")
@click.option("--actor", help="Who did it, kept in the audit log (default: the OS user).")
@click.pass_context
def confirm_cmd(ctx: click.Context, request_id: str, system: str, note: str, actor: str | None) -> None:
    """Mark a manual step as done (e.g. 'Forget the contact in FreshChat')."""
    with errors_to_exit():
        from workers import app
        from workers.actors import WAKE

        actor = actor_or_user(actor)
        rt = runtime(ctx)
        with in_process_worker_if_embedded(app.is_embedded()):
            n = pipeline.confirm_manual(rt, WAKE, request_id, system, note, actor)
            click.echo(f"confirmed {n} task(s) of {system}", err=True)
            if app.is_embedded():
                wait_for(rt, request_id, 120, show=True)

