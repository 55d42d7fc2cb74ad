"""`dsar ledger` commands (registered on workers.cli.common.main): purge personal data past ledger.retention_days."""

from __future__ import annotations

import click

from workers.cli.common import actor_or_user, emit, errors_to_exit, main, runtime


@main.group("ledger")
def ledger_group() -> None:
    """The ledger's own data."""


@ledger_group.command("purge")
@click.option("--dry-run", is_flag=True, help="Count what would be blanked; change nothing.")
@click.option("--actor", help="Who does this, kept in the audit log (default: the OS user).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def purge_cmd(ctx: click.Context, dry_run: bool, actor: str | None, as_json: bool) -> None:
    """Blank the e-mail and learned identifiers of requests that ended more than ledger.retention_days ago.

    The keyed hash of the e-mail stays (a repeat request is still recognised), and so do the receipts,
    without personal data. Audited with counts only; running it again changes nothing. Workers do it too.
    """
    from discovery.engine.ledger_retention import purge

    with errors_to_exit():
        result = purge(runtime(ctx), dry_run=dry_run, actor=actor_or_user(actor))

        def human() -> None:
            verb = "would blank" if dry_run else "blanked"
            click.echo(f"{verb}: {result.requests} request(s), {result.identities} identifier(s), "
                       f"{result.tasks} task result(s), {result.scheduled_actions} finished scheduled action(s) "
                       f"ended before {result.cutoff:%Y-%m-%d} (ledger.retention_days = {result.retention_days})")

        emit(result.to_dict(), as_json, human)
