"""`dsar` commands for the api part (registered on workers.cli.common.main): serve, tokens, deadlines, identity."""

from __future__ import annotations

import os
import socket
import sys
from datetime import timedelta
from pathlib import Path

import click

from discovery.engine import pipeline
from discovery.engine.settings import load_settings
from discovery.intake import api_tokens, download_tokens
from discovery.schedule import deadlines
from workers.cli.common import EXIT_CONFIG, actor_or_user, emit, errors_to_exit, fail, main, runtime, wait_for
from workers.inprocess import in_process_worker_if_embedded

# No default here: actor_or_user names the OS user (never a made-up "operator") and refuses a blank --actor.
_ACTOR = click.option("--actor", help="Who does this, kept in the audit log (default: the OS user).")


@main.command("serve")
@click.option("--host", help="Address to listen on (default: api.host).")
@click.option("--port", type=click.IntRange(1, 65535), help="Port (default: api.port).")
@click.option("--workers", type=click.IntRange(1, 64), help="Server processes (default: api.workers).")
@click.pass_context
def serve_cmd(ctx: click.Context, host: str | None, port: int | None, workers: int | None) -> None:
    """Run the HTTP API (uvicorn): intake, status, downloads, ticket webhooks. /docs shows the OpenAPI."""
    with errors_to_exit():
        settings = load_settings(ctx.obj.get("config"))
        host, port, workers = host or settings.api.host, port or settings.api.port, workers or settings.api.workers
        _check_port_free(host, port)
        runtime(ctx)  # validates the data map and upgrades the ledger once, before the server starts
        if ctx.obj.get("config"):  # server processes load the same settings
            os.environ["DSAR_CONFIG"] = str(Path(ctx.obj["config"]).resolve())
        # ... and the address they really listen on (the demo's links use it; never the file's port under --port)
        os.environ["DSAR_API_HOST"], os.environ["DSAR_API_PORT"] = host, str(port)
        if why := download_tokens.links_refused(settings):
            click.echo(f"warning: {why}", err=True)
        click.echo(f"dsar API on http://{host}:{port} ({workers} process(es)); OpenAPI at /openapi.json", err=True)
        runtime(ctx).close()
        from workers.serve import serve_argv

        argv = serve_argv(host, port, workers)
        # This process has the whole CLI loaded; the server that runs for days needs the app only (workers/serve.py).
        # Same pid (signals, scripts and service managers see no difference); the ledger was upgraded just above.
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(argv[0], argv, dict(os.environ, DSAR_SCHEMA_UPGRADED="1"))


def _check_port_free(host: str, port: int) -> None:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror:
        fail(f"cannot listen on {host}: unknown address", EXIT_CONFIG)
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            fail(f"cannot listen on {host}:{port}: {exc.strerror or exc}", EXIT_CONFIG)


# -- tokens ----------------------------------------------------------------------------------

@main.group("token")
def token_group() -> None:
    """HTTP API tokens: create (shown once), list, revoke."""


@token_group.command("create")
@click.argument("name")
@click.option("--scope", "scopes", multiple=True, required=True, type=click.Choice(api_tokens.SCOPES),
              help="What the token may do; repeat for several (admin may do everything).")
@click.option("--expires-days", type=click.IntRange(1, 3650), help="Expire after this many days (default: never).")
@click.option("--json", "as_json", is_flag=True)
@_ACTOR
@click.pass_context
def token_create_cmd(ctx: click.Context, name: str, scopes: tuple[str, ...], expires_days: int | None,
                     as_json: bool, actor: str | None) -> None:
    """Create a token and print it once (only its hash is kept)."""
    with errors_to_exit():
        info, token = api_tokens.create_token(runtime(ctx), name, list(scopes), actor_or_user(actor),
                                              timedelta(days=expires_days) if expires_days else None)
        if as_json:
            emit({**info.to_dict(), "token": token}, True, lambda: None)
            return
        click.echo(token)
        click.echo(f"token '{info.name}' ({', '.join(info.scopes)}) created; it is shown only this once", err=True)


@token_group.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def token_list_cmd(ctx: click.Context, as_json: bool) -> None:
    """Every token: scopes, expiry, revocation, last use (never the token itself)."""
    with errors_to_exit():
        tokens = api_tokens.list_tokens(runtime(ctx))

        def human() -> None:
            if not tokens:
                click.echo("No API tokens; make one with `dsar token create NAME --scope ...`.")
            for t in tokens:
                state = "revoked" if t.revoked_at else ("expires " + f"{t.expires_at:%Y-%m-%d}" if t.expires_at
                                                         else "no expiry")
                used = f"{t.last_used_at:%Y-%m-%d %H:%M}" if t.last_used_at else "never"
                click.echo(f"{t.name:<24} {','.join(t.scopes):<28} {state:<18} last used {used}")

        emit([t.to_dict() for t in tokens], as_json, human)


@token_group.command("revoke")
@click.argument("name")
@_ACTOR
@click.pass_context
def token_revoke_cmd(ctx: click.Context, name: str, actor: str | None) -> None:
    """Revoke a token at once (its name stays taken)."""
    with errors_to_exit():
        api_tokens.revoke_token(runtime(ctx), name, actor_or_user(actor))
        click.echo(f"token '{name}' revoked", err=True)


# -- deadlines and identity ------------------------------------------------------------------

@main.command("overdue")
@click.option("--within-days", type=click.IntRange(0, 365), default=deadlines.DUE_SOON_DAYS, show_default=True,
              help="Also list open requests due within this many days.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def overdue_cmd(ctx: click.Context, within_days: int, as_json: bool) -> None:
    """Open requests that are late or due soon, most urgent first."""
    with errors_to_exit():
        rows = deadlines.due_soon(runtime(ctx), within_days)

        def human() -> None:
            if not rows:
                click.echo(f"Nothing is late or due within {within_days} days.")
                return
            for d in rows:
                when = f"LATE since {d.due_at:%Y-%m-%d %H:%M} UTC" if d.overdue else f"{d.days_left} day(s) left"
                extended = "  (extended)" if d.extended else ""
                ticket = f"  ticket {d.ticket}" if d.ticket else ""
                click.echo(f"{d.id}  {d.type:<16} {d.status:<21} {when}{extended}{ticket}")

        emit({"within_days": within_days, "requests": [d.to_dict() for d in rows]}, as_json, human)


@main.command("identity-verified")
@click.argument("request_id")
@click.option("--note", required=True, help="How the identity was checked (kept in the audit log).")
@_ACTOR
@click.pass_context
def identity_verified_cmd(ctx: click.Context, request_id: str, note: str, actor: str | None) -> None:
    """Release a request held in awaiting_verification: the requester may act for the subject."""
    with errors_to_exit():
        who = actor_or_user(actor)
        from workers import app
        from workers.actors import WAKE

        rt = runtime(ctx)
        with in_process_worker_if_embedded(app.is_embedded()):
            pipeline.verify_request(rt, WAKE, request_id, who, note)
            click.echo(f"request {request_id}: identity verified; it proceeds", err=True)
            if app.is_embedded():
                wait_for(rt, request_id, 600, show=True)


@main.command("extend")
@click.argument("request_id")
@click.option("--days", type=int, required=True, help="Days added to the deadline (two months in all at most).")
@click.option("--reason", required=True, help="Why (Art. 12(3): the person is told).")
@click.option("--json", "as_json", is_flag=True)
@_ACTOR
@click.pass_context
def extend_cmd(ctx: click.Context, request_id: str, days: int, reason: str, as_json: bool,
               actor: str | None) -> None:
    """Extend a request's deadline, recording the reason (audited)."""
    with errors_to_exit():
        ext = deadlines.extend(runtime(ctx), request_id, days, reason, actor_or_user(actor))
        data = {"id": ext.request_id, "due_at": ext.due_at.isoformat(),
                "original_due_at": ext.original_due_at.isoformat(), "latest_possible": ext.latest_possible.isoformat()}
        emit(data, as_json, lambda: click.echo(
            f"request {request_id}: due {ext.due_at:%Y-%m-%d} (was {ext.original_due_at:%Y-%m-%d}; "
            f"{ext.latest_possible:%Y-%m-%d} at the latest)"))
