"""`dsar retention` (registered on workers.cli.common.main): the data map's retention promises, kept and shown.

    dsar retention plan [--system S] [--json]         what is past retention today, per rule; changes nothing
    dsar retention run [--system S] [--batch N] [--json]   carry it out (batched, resumable, audited)
    dsar retention report [--format html|csv|json] [--output FILE]   for the DPO and the auditor
    dsar retention confirm SYSTEM --note TEXT [--entity E]   a vendor setting checked by hand (audited)

Like the scheduling commands these read DSAR_NOW (an ISO 8601 time) as the clock, for tests and drills.
"""

from __future__ import annotations

import os
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import click

from discovery.engine.runtime import Runtime
from discovery.engine.settings import ConfigError, load_settings
from discovery.schedule import retention
from workers.cli.common import EXIT_FAILED, emit, errors_to_exit, main

CLOCK_ENV = "DSAR_NOW"


def _runtime(ctx: click.Context) -> Runtime:
    if "runtime" not in ctx.obj:
        import time

        from workers import app

        settings = load_settings(ctx.obj.get("config"))
        text = os.environ.get(CLOCK_ENV, "").strip()
        rt = None
        if text:
            try:
                start = datetime.fromisoformat(text.replace("Z", "+00:00"))
            except ValueError:
                raise ConfigError(f"{CLOCK_ENV}='{text}' is not an ISO 8601 time (e.g. 2031-06-02T00:00:00Z)") \
                    from None
            start = start if start.tzinfo else start.replace(tzinfo=UTC)
            origin = time.monotonic()
            rt = Runtime(settings, now=lambda: start + timedelta(seconds=time.monotonic() - origin))
        ctx.obj["runtime"] = app.setup(settings, rt)
    return ctx.obj["runtime"]  # type: ignore[no-any-return]


@main.group("retention")
def retention_group() -> None:
    """Retention without a request: plan, run, report, confirm (docs/retention.md)."""


@retention_group.command("plan")
@click.option("--system", help="Only this system.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def plan_cmd(ctx: click.Context, system: str | None, as_json: bool) -> None:
    """Per system and rule: records past retention today, kept (hold, open request, restricted), the oldest one's
    age, and what a run would do. Changes nothing."""
    with errors_to_exit():
        rows = retention.plan(_runtime(ctx), system)

        def human() -> None:
            if not rows:
                click.echo("No retention rule is declared" + (f" for {system}." if system else "."))
                return
            click.echo(f"{'RULE':<34} {'MECHANISM':<16} {'DUE':>8} {'HELD':>7} {'REQUEST':>7} {'ART18':>7} "
                       f"{'OLDEST':>8}  ACTION")
            for r in rows:
                oldest = f"{r['oldest_age_days']}d" if r.get("oldest_age_days") is not None else ""
                due = r.get("due", "") if "error" not in r else "error"
                click.echo(f"{r['rule']:<34} {r['mechanism']:<16} {due!s:>8} "
                           f"{r.get('kept_hold', '')!s:>7} {r.get('kept_request', '')!s:>7} "
                           f"{r.get('kept_restricted', '')!s:>7} {oldest:>8}  "
                           f"{r['action']}" + (f" ({r['error']})" if r.get("error") else ""))

        emit(rows, as_json, human)


@retention_group.command("run")
@click.option("--system", help="Only this system.")
@click.option("--batch", type=click.IntRange(1, 100_000), default=retention.BATCH, show_default=True,
              help="Records per transaction.")
@click.option("--actor", default=lambda: os.environ.get("USER", "operator"), show_default="$USER")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def run_cmd(ctx: click.Context, system: str | None, batch: int, actor: str, as_json: bool) -> None:
    """Carry out the retention rules: erase or anonymise what is past retention (batched, resumable, audited),
    hand inactive accounts to the notice sweep and marketing data to the marketing sweep."""
    with errors_to_exit():
        rt = _runtime(ctx)

        def progress(key: str, entry: dict[str, Any]) -> None:
            changed = sum(v for v in (entry.get("changed") or {}).values() if isinstance(v, int))
            click.echo(f"  {key}: {changed} so far{' (done)' if entry.get('done') else ''}", err=True)

        result = retention.run(rt, system, batch=batch, actor=actor, progress=progress)
        data = result.to_dict()

        def human() -> None:
            click.echo(f"Retention run #{result.run_id}{' (resumed)' if result.resumed else ''}, as of "
                       f"{result.as_of:%Y-%m-%d %H:%M} UTC:")
            for key, entry in result.rules.items():
                click.echo(f"  {key}: {_counts(entry.get('changed')) or 'nothing'}"
                           + (f"; kept: {_counts(entry.get('skipped'))}" if entry.get("skipped") else "")
                           + (f"; error: {entry['error']}" if entry.get("error") else ""))

        emit(data, as_json, human)
        if result.errors:
            sys.exit(EXIT_FAILED)


def _counts(value: Any) -> str:
    return retention.counts_text(value)


@retention_group.command("report")
@click.option("--format", "fmt", type=click.Choice(["html", "csv", "json"]), default="json", show_default=True)
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), help="Write to this file (default: stdout).")
@click.pass_context
def report_cmd(ctx: click.Context, fmt: str, output: Path | None) -> None:
    """Every promise of the data map, its mechanism, the last run, what it removed and kept (and why), and what is
    overdue: the page a DPO shows an auditor."""
    with errors_to_exit():
        data = retention.report(_runtime(ctx))
        if fmt == "csv":
            text = retention.report_csv(data)
        elif fmt == "html":
            text = retention.report_html(data)
        else:
            import orjson

            text = orjson.dumps(data, option=orjson.OPT_INDENT_2, default=str).decode() + "\n"
        if output is None:
            click.echo(text, nl=False)
        else:
            output.write_text(text, encoding="utf-8")
            click.echo(f"Retention report ({fmt}) written to {output}: {len(data['rules'])} rule(s), "
                       f"{data['overdue']} overdue", err=True)


@retention_group.command("confirm")
@click.argument("system")
@click.option("--note", "note_text", required=True, help="What was checked, e.g. 'Matomo: delete logs older than "
              "60 months is on (Privacy > Anonymize data)'.")
@click.option("--entity", help="The rule's entity, when the system has several.")
@click.option("--actor", default=lambda: os.environ.get("USER", "operator"), show_default="$USER")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def confirm_cmd(ctx: click.Context, system: str, note_text: str, entity: str | None, actor: str,
                as_json: bool) -> None:
    """Record that a vendor's retention setting was checked by hand (shown in the report with its date)."""
    with errors_to_exit():
        row = retention.confirm(_runtime(ctx), system, note_text, actor, entity)
        data = {"id": row.id, "system": row.system, "entity": row.entity, "note": row.note,
                "confirmed_by": row.confirmed_by, "confirmed_at": row.confirmed_at.isoformat()}
        emit(data, as_json, lambda: click.echo(f"Confirmed {system}{'.' + entity if entity else ''} on "
                                               f"{row.confirmed_at:%Y-%m-%d} by {actor}: {row.note}"))
