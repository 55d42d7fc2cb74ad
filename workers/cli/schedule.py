"""`dsar` commands for scheduled erasures (registered on workers.cli.common.main).

    dsar scheduler [--once] [--batch N]          claim due actions and turn them into erasure requests; run the
                                                 periodic jobs (sweeps, bundle expiry, ledger purge) when due
    dsar account-deleted --email E [--grace 30d]  erase a deleted account after the grace period
    dsar schedule list [--all] [--email E]        what is scheduled
    dsar schedule cancel ID --reason R           e.g. the account was restored (audited)
    dsar sweep-inactive                          notify inactive accounts and schedule their erasure
    dsar sweep-marketing                         schedule Mautic-only erasures: unsubscribed, trial ended

The clock: these commands read `DSAR_NOW` (an ISO 8601 time, e.g. 2031-06-02T00:00:00Z) for tests
and drills: the process then starts at that time and its clock runs on from there, so a scheduler
can be shown what happens when a grace period or a 5-year hold has passed. Unset in production.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import click

from discovery.engine.ledger import ScheduledAction
from discovery.engine.runtime import Runtime
from discovery.engine.settings import ConfigError, load_settings
from discovery.schedule import inactivity, marketing, periodic, scheduler
from workers.cli.common import EXIT_FAILED, actor_or_user, emit, errors_to_exit, main, wait_for
from workers.inprocess import in_process_worker_if_embedded

CLOCK_ENV = "DSAR_NOW"


def clock_from_env(env: Mapping[str, str]) -> Callable[[], datetime] | None:
    """A clock starting at $DSAR_NOW and running on in real time; None when unset (the real clock)."""
    text = env.get(CLOCK_ENV, "").strip()
    if not text:
        return None
    try:
        start = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(f"{CLOCK_ENV}='{text}' is not an ISO 8601 time (e.g. 2031-06-02T00:00:00Z)") from None
    start = start if start.tzinfo else start.replace(tzinfo=UTC)
    origin = time.monotonic()
    return lambda: start + timedelta(seconds=time.monotonic() - origin)


def schedule_runtime(ctx: click.Context) -> Runtime:
    """Like workers.cli.common.runtime, with the clock DSAR_NOW sets."""
    if "runtime" not in ctx.obj:
        from workers import app

        settings = load_settings(ctx.obj.get("config"))
        clock = clock_from_env(os.environ)
        ctx.obj["runtime"] = app.setup(settings, Runtime(settings, now=clock) if clock else None)
    return ctx.obj["runtime"]  # type: ignore[no-any-return]


def _masked(email: str) -> str:
    """Enough to recognise a subject on screen, not enough to read it off (use --email to filter)."""
    local, _, domain = email.partition("@")
    return f"{local[:1]}***@{domain}"


def _action_data(a: ScheduledAction) -> dict[str, Any]:
    return {"id": a.id, "kind": a.kind, "status": a.status, "due_at": a.due_at.isoformat(),
            "subject": _masked(a.subject_email), "reason": a.reason, "attempts": a.attempts,
            "created_by": a.created_by, "created_at": a.created_at.isoformat(), "request_id": a.request_id,
            "source_request_id": a.source_request_id, "error": a.error,
            "done_at": a.done_at.isoformat() if a.done_at else None,
            "cancel_reason": (a.details or {}).get("cancel_reason")}


# -- the scheduler -------------------------------------------------------------------------------

@main.command("scheduler")
@click.option("--once", is_flag=True, help="Run everything due now, then exit (for cron).")
@click.option("--batch", type=click.IntRange(1, 10_000), help="Actions claimed per transaction "
              "(default: schedule.batch_size).")
@click.option("--timeout", type=float, default=600.0, show_default=True,
              help="With the in-process broker and --once: seconds to wait for the requests created.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable summary on stdout.")
@click.option("--periodic/--no-periodic", "with_periodic", default=None,
              help="Run the periodic jobs when due, each under its lock: the retention run (with the inactivity and "
                   "marketing sweeps), bundle expiry, ledger purge (default: on in the loop, off with --once).")
@click.option("--alive-file", type=click.Path(dir_okay=False), help="Touched after every round (a container "
              "healthcheck reads its age).")
@click.pass_context
def scheduler_cmd(ctx: click.Context, once: bool, batch: int | None, timeout: float, as_json: bool,
                  with_periodic: bool | None, alive_file: str | None) -> None:
    """Claim due scheduled actions and turn them into erasure requests (a loop; --once for cron), and run the
    periodic jobs when due (discovery.schedule.periodic), the daily retention run among them."""
    with errors_to_exit():
        from workers import app
        from workers.actors import WAKE

        rt = schedule_runtime(ctx)
        size = batch or rt.settings.schedule.batch_size
        worker = scheduler.worker_name()
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())  # finish the batch in hand, then stop

        def progress(r: scheduler.BatchResult) -> None:
            click.echo(f"scheduler: claimed {r.claimed}: {r.requests} request(s), {r.cancelled} cancelled, "
                       f"{r.failed} failed, {r.retried} to retry", err=True)

        if not once:
            click.echo(f"scheduler {worker}: polling every {rt.settings.schedule.poll_interval_seconds:g}s "
                       f"(batch {size}); Ctrl-C stops", err=True)
        run_periodic = (not once) if with_periodic is None else with_periodic
        ran: list[periodic.JobOutcome] = []  # kept for the summary with --once only (a loop runs for months)
        with in_process_worker_if_embedded(app.is_embedded()):
            total = scheduler.BatchResult()
            while not stop.is_set():
                for outcome in periodic.run_due(rt, worker) if run_periodic else []:
                    click.echo(f"scheduler: {outcome.line()}", err=True)
                    if once:
                        ran.append(outcome)
                total.add(scheduler.run_scheduler(rt, WAKE, worker=worker, batch=size, once=True, stop=stop,
                                                  progress=progress))
                if alive_file:
                    Path(alive_file).touch()
                if once:
                    break
                stop.wait(rt.settings.schedule.poll_interval_seconds)
            finished: dict[str, str] = {}
            if app.is_embedded() and once:  # this process is the worker: let the requests finish
                for request_id in total.request_ids:
                    finished[request_id] = wait_for(rt, request_id, timeout, show=False)
        data = {**total.to_dict(), "worker": worker, "requests_created": total.request_ids,
                "request_status": finished, "periodic": [o.to_dict() for o in ran]}

        def human() -> None:
            click.echo(f"{total.claimed} due action(s) claimed: {total.requests} erasure request(s) created, "
                       f"{total.cancelled} cancelled, {total.failed} failed, {total.retried} to retry")
            for request_id, status in finished.items():
                click.echo(f"  request {request_id}: {status}")
            for outcome in ran:
                click.echo(f"  periodic {outcome.line()}")

        emit(data, as_json, human)
        if total.failed or any(s not in ("completed", "awaiting_manual") for s in finished.values()) \
                or any(o.status != periodic.DONE for o in ran):
            sys.exit(EXIT_FAILED)


# -- scheduling and cancelling -------------------------------------------------------------------

@main.command("account-deleted")
@click.option("--email", required=True, help="The e-mail of the deleted account.")
@click.option("--grace", help="Erase after this long, e.g. 30d, 12h, 2w (default: schedule.grace_days).")
@click.option("--actor", help="Who does this, kept in the audit log (default: the OS user).")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def account_deleted_cmd(ctx: click.Context, email: str, grace: str | None, actor: str | None,
                        as_json: bool) -> None:
    """An account was deleted: schedule its erasure after the grace period (cancel it if the account is restored)."""
    with errors_to_exit():
        from connectors.emails import normalise_email

        normalise_email(email)  # refuse bad input before touching any service
        delta = scheduler.parse_duration(grace) if grace is not None else None
        rt = schedule_runtime(ctx)
        action, created = scheduler.account_deletion(rt, email, delta, actor_or_user(actor))
        data = {**_action_data(action), "created": created}

        def human() -> None:
            head = "Erasure scheduled" if created else "Already scheduled (same person)"
            click.echo(f"{head}: #{action.id}, due {action.due_at:%Y-%m-%d %H:%M} UTC ({action.reason})")
            click.echo(f"If the account is restored: dsar schedule cancel {action.id} --reason \"...\"")

        emit(data, as_json, human)


@main.group("schedule")
def schedule_group() -> None:
    """List and cancel scheduled erasures."""


@schedule_group.command("list")
@click.option("--all", "include_closed", is_flag=True, help="Include done and cancelled actions.")
@click.option("--email", help="Only this person's actions.")
@click.option("--limit", type=click.IntRange(1, 100_000), default=500, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def schedule_list_cmd(ctx: click.Context, include_closed: bool, email: str | None, limit: int, as_json: bool) -> None:
    """Scheduled actions, the next due first (subjects shown masked)."""
    with errors_to_exit():
        rows = [_action_data(a) for a in scheduler.list_actions(schedule_runtime(ctx), include_closed, email, limit)]

        def human() -> None:
            if not rows:
                click.echo("Nothing scheduled." + ("" if include_closed else " (--all shows done and cancelled)"))
                return
            click.echo(f"{'ID':>6}  {'KIND':<18} {'STATUS':<10} {'DUE (UTC)':<16} {'SUBJECT':<24} REASON")
            for r in rows:
                note = r["cancel_reason"] or r["error"] or r["reason"]
                if r["request_id"]:
                    note = f"request {r['request_id']}; {note}"
                click.echo(f"{r['id']:>6}  {r['kind']:<18} {r['status']:<10} {r['due_at'][:16].replace('T', ' '):<16} "
                           f"{r['subject']:<24} {note[:90]}")

        emit(rows, as_json, human)


@schedule_group.command("cancel")
@click.argument("action_id", type=int)
@click.option("--reason", required=True, help="Why (kept in the audit log), e.g. 'account restored'.")
@click.option("--actor", help="Who does this, kept in the audit log (default: the OS user).")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def schedule_cancel_cmd(ctx: click.Context, action_id: int, reason: str, actor: str | None, as_json: bool) -> None:
    """Cancel a scheduled action, e.g. because the account was restored."""
    with errors_to_exit():
        action = scheduler.cancel(schedule_runtime(ctx), action_id, reason, actor_or_user(actor))
        data = _action_data(action)
        emit(data, as_json, lambda: click.echo(f"Cancelled #{action.id} ({action.kind}, was due "
                                               f"{action.due_at:%Y-%m-%d}): {reason}"))


@main.command("sweep-inactive")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def sweep_inactive_cmd(ctx: click.Context, as_json: bool) -> None:
    """Tell people whose accounts are inactive too long, and schedule the erasure after the notice period."""
    with errors_to_exit():
        rt = schedule_runtime(ctx)

        def progress(r: inactivity.SweepResult) -> None:
            click.echo(f"  {r.notified} notified so far ...", err=True)

        result = inactivity.sweep_inactive(rt, progress=progress)
        data = result.to_dict()

        def human() -> None:
            if not result.systems:
                click.echo("No system in the data map names an inactivity entity and last-activity column.")
                return
            click.echo(f"Inactive since before {result.cutoff:%Y-%m-%d} in {', '.join(result.systems)}: "
                       f"{result.inactive}")
            click.echo(f"  notified now, erasure scheduled for {result.due_at:%Y-%m-%d}: {result.notified}")
            click.echo(f"  notified earlier, erasure still pending: {result.already_scheduled}")
            if result.failed:
                click.echo(f"  notice not sent (nothing scheduled; the next sweep retries): {result.failed}: "
                           + "; ".join(result.errors))

        emit(data, as_json, human)
        if result.failed:
            sys.exit(EXIT_FAILED)


@main.command("sweep-marketing")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def sweep_marketing_cmd(ctx: click.Context, as_json: bool) -> None:
    """Schedule erasures in Mautic only: people who unsubscribed from the newsletter, and ended trials."""
    with errors_to_exit():
        result = marketing.sweep_marketing(schedule_runtime(ctx))
        data = result.to_dict()

        def human() -> None:
            if not result.systems:
                click.echo("No Mautic system is enabled in the data map.")
                return
            click.echo(f"Marketing retention in {', '.join(result.systems)} ({result.at:%Y-%m-%d %H:%M} UTC):")
            click.echo(f"  unsubscribed from the newsletter: {result.unsubscribed}")
            click.echo(f"  trial ended: {result.trials_ended}")
            click.echo(f"  erasures scheduled now: {result.scheduled}; already scheduled: {result.already_scheduled}")
            if result.scheduled:
                click.echo("  (they run with `dsar scheduler`; see `dsar schedule list`)")

        emit(data, as_json, human)
