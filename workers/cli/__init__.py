"""The `dsar` command line. Output is for people; with --json, for scripts (one JSON document on stdout).

Exit codes: 0 ok; 1 finished with errors (a failed system, a failed check); 2 bad input;
3 configuration or data-map error; 4 unknown request; 5 a service is unreachable (ledger,
broker); 6 timed out waiting; 7 not ready (no bundle yet, or it expired).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn

import click
import orjson
import sqlalchemy as sa
from sqlalchemy.exc import OperationalError

from connectors.base import ConnectorError
from connectors.emails import InvalidEmail
from discovery.engine import pipeline
from discovery.engine.datamap import DataMapError
from discovery.engine.db import LedgerUnavailable
from discovery.engine.ledger import OPEN_STATUSES, Request, RequestStatus, RequestType, Task
from discovery.engine.runtime import Runtime
from discovery.engine.settings import ConfigError, load_settings
from workers.inprocess import in_process_worker_if_embedded

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_CONFIG, EXIT_NOT_FOUND, EXIT_UNAVAILABLE, EXIT_TIMEOUT, EXIT_NOT_READY = range(8)


class CliError(Exception):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def fail(message: str, code: int) -> NoReturn:
    raise CliError(message, code)


@contextmanager
def errors_to_exit() -> Iterator[None]:
    """Every expected failure becomes one line on stderr and its exit code; no tracebacks for people."""
    try:
        yield
    except CliError as exc:
        click.echo(f"dsar: {exc}", err=True)
        sys.exit(exc.code)
    except (InvalidEmail, pipeline.InvalidInput) as exc:
        click.echo(f"dsar: {exc}", err=True)
        sys.exit(EXIT_USAGE)
    except (ConfigError, DataMapError) as exc:
        click.echo(f"dsar: {exc}", err=True)
        sys.exit(EXIT_CONFIG)
    except pipeline.NotFoundError as exc:
        click.echo(f"dsar: {exc}", err=True)
        sys.exit(EXIT_NOT_FOUND)
    except LedgerUnavailable as exc:
        click.echo(f"dsar: {exc}", err=True)
        sys.exit(EXIT_UNAVAILABLE)
    except OperationalError:
        click.echo("dsar: ledger database unreachable", err=True)
        sys.exit(EXIT_UNAVAILABLE)
    except ConnectorError as exc:
        click.echo(f"dsar: {exc}", err=True)
        sys.exit(EXIT_CONFIG if not exc.transient else EXIT_UNAVAILABLE)
    except Exception as exc:
        if type(exc).__module__.startswith(("redis", "dramatiq")):
            click.echo(f"dsar: broker unreachable ({type(exc).__name__})", err=True)
            sys.exit(EXIT_UNAVAILABLE)
        raise


def runtime(ctx: click.Context) -> Runtime:
    """Load settings, wire the broker, upgrade the ledger schema; cached per command."""
    if "runtime" not in ctx.obj:
        from workers import app

        settings = load_settings(ctx.obj.get("config"))
        ctx.obj["runtime"] = app.setup(settings)
    return ctx.obj["runtime"]  # type: ignore[no-any-return]


def emit(data: Any, as_json: bool, human: Callable[[], None]) -> None:
    if as_json:
        click.echo(orjson.dumps(data, option=orjson.OPT_INDENT_2, default=str).decode())
    else:
        human()


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config", type=click.Path(dir_okay=False), envvar="DSAR_CONFIG",
              help="Settings file (default: config/dsar.toml).")
@click.option("-v", "--verbose", is_flag=True, help="Show the workers' log lines (stderr).")
@click.pass_context
def main(ctx: click.Context, config: str | None, verbose: bool) -> None:
    """Answer GDPR data-subject requests across every system that holds a person's data."""
    if ctx.invoked_subcommand != "worker":
        os.environ.setdefault("DSAR_LOG_LEVEL", "INFO" if verbose else "WARNING")
    ctx.ensure_object(dict)
    ctx.obj["config"] = config


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
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def request_cmd(ctx: click.Context, request_type: str, email: str, ticket: str | None, wait: bool, timeout: float,
                dry_run: bool, systems: tuple[str, ...], as_json: bool) -> None:
    """Submit an access, portability, erasure, restriction or lift-restriction request."""
    rtype = request_type.replace("-", "_")
    scope = list(systems) or None
    with errors_to_exit():
        from connectors.emails import normalise_email

        normalise_email(email)  # refuse bad input before touching any service
        rt = runtime(ctx)
        if dry_run:
            found, steps = pipeline.dry_run(rt, rtype, email, scope)
            data = {"dry_run": True, "type": rtype, "systems": scope, "rounds": found.rounds,
                    "identifiers": [i.to_dict() for i in found.identities],
                    "locate_errors": found.errors, "plan": [s.to_dict() for s in steps]}
            emit(data, as_json, lambda: _print_plan(data))
            return
        from workers import app
        from workers.actors import WAKE

        with in_process_worker_if_embedded(app.is_embedded()):
            submitted = pipeline.submit(rt, WAKE, rtype, email, ticket, actor="cli", systems=scope)
            req = submitted.request
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


def wait_for(rt: Runtime, request_id: str, timeout: float, show: bool) -> str:
    """Poll the ledger until the request leaves the open states, printing each task's changes."""
    deadline = time.monotonic() + timeout
    seen: dict[tuple[str, str], str] = {}
    last_status = ""
    while True:
        with rt.sessions() as s:
            req = s.get(Request, request_id)
            if req is None:
                fail(f"unknown request {request_id}", EXIT_NOT_FOUND)
            tasks = list(s.scalars(sa.select(Task).where(Task.request_id == request_id).order_by(Task.id)))
            status = req.status
        if show:
            if status != last_status:
                click.echo(f"  request: {status}", err=True)
                last_status = status
            for t in tasks:
                key = (t.system, t.action)
                if seen.get(key) != t.status:
                    seen[key] = t.status
                    click.echo(f"  {t.system:<14} {t.action:<17} {t.status}{_task_note(t)}", err=True)
        if status not in OPEN_STATUSES or status == RequestStatus.AWAITING_MANUAL:
            return status
        if time.monotonic() > deadline:
            fail(f"request {request_id} still {status} after {timeout:.0f}s; see `dsar status {request_id}`",
                 EXIT_TIMEOUT)
        time.sleep(0.2)


def _task_note(t: Task) -> str:
    result = t.result or {}
    if t.status == "done" and t.action == "export":
        n = sum(e["records"] for e in result.get("entities", {}).values())
        return f"  ({n} records)"
    if t.status in ("done", "awaiting_manual") and result.get("changed") is not None:
        changed = ", ".join(f"{k} {v}" for k, v in result["changed"].items()) or "nothing to change"
        return f"  ({changed})"
    if t.error and t.status in ("failed", "unsupported", "pending"):
        return f"  ({t.error})"
    return ""


# -- status / download / confirm -------------------------------------------------------------

def _load(rt: Runtime, request_id: str) -> tuple[Request, list[Task]]:
    with rt.sessions() as s:
        req = s.get(Request, request_id)
        if req is None:
            fail(f"unknown request {request_id}", EXIT_NOT_FOUND)
        tasks = list(s.scalars(sa.select(Task).where(Task.request_id == request_id).order_by(Task.id)))
    return req, tasks


def status_data(rt: Runtime, request_id: str) -> dict[str, Any]:
    req, tasks = _load(rt, request_id)
    now = rt.clock()
    return {
        "id": req.id, "type": req.type, "status": req.status, "ticket": req.ticket_ref, "systems": req.systems,
        "received_at": req.received_at.isoformat(), "due_at": req.due_at.isoformat(),
        "days_left": (req.due_at - now).days if req.status in OPEN_STATUSES else None,
        "completed_at": req.completed_at.isoformat() if req.completed_at else None,
        "bundle": req.bundle_path, "error": req.error,
        "tasks": [{
            "system": t.system, "action": t.action, "status": t.status, "attempts": t.attempts,
            "entities": t.entities, "error": t.error, "records": _records(t),
            "changed": (t.result or {}).get("changed"), "held": (t.result or {}).get("held"),
            "manual_steps": (t.result or {}).get("manual_steps"),
        } for t in tasks],
    }


def _records(t: Task) -> int | None:
    if t.action != "export" or not t.result:
        return None
    return sum(e["records"] for e in t.result.get("entities", {}).values())


def _print_status(data: dict[str, Any]) -> None:
    click.echo(f"Request {data['id']}  {data['type']}  status: {data['status']}"
               + (f"  ticket: {data['ticket']}" if data["ticket"] else "")
               + (f"  only: {', '.join(data['systems'])}" if data.get("systems") else ""))
    due = datetime.fromisoformat(data["due_at"])
    left = f"  ({data['days_left']} days left)" if data["days_left"] is not None else ""
    click.echo(f"Received {data['received_at'][:16].replace('T', ' ')} UTC, due {due:%Y-%m-%d}{left}")
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
    if data["bundle"]:
        click.echo(f"Bundle: {data['bundle']}")
    if data["error"]:
        click.echo(f"Errors: {data['error']}")


def _print_plan(data: dict[str, Any]) -> None:
    click.echo(f"Dry run ({data['type']}): nothing was changed. Identifiers found in {data['rounds']} round(s):")
    for i in data["identifiers"]:
        click.echo(f"  {i['type']:<22} from {i['source']}")
    for system, error in data["locate_errors"].items():
        click.echo(f"  {system}: locate failed: {error}")
    click.echo("Plan:")
    for s in data["plan"]:
        click.echo(f"  {s['system']:<14} {s['entity']:<16} {s['action']:<17} {s['reason']}")


@main.command("status")
@click.argument("request_id")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def status_cmd(ctx: click.Context, request_id: str, as_json: bool) -> None:
    """Show a request: each task's state, the due date and days left."""
    with errors_to_exit():
        data = status_data(runtime(ctx), request_id)
        emit(data, as_json, lambda: _print_status(data))


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
        req, _ = _load(rt, request_id)
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
@click.option("--actor", default=lambda: os.environ.get("USER", "operator"), show_default="$USER")
@click.pass_context
def confirm_cmd(ctx: click.Context, request_id: str, system: str, note: str, actor: str) -> None:
    """Mark a manual step as done (e.g. 'Forget the contact in FreshChat')."""
    with errors_to_exit():
        from workers import app
        from workers.actors import WAKE

        rt = runtime(ctx)
        with in_process_worker_if_embedded(app.is_embedded()):
            n = pipeline.confirm_manual(rt, WAKE, request_id, system, note, actor)
            click.echo(f"confirmed {n} task(s) of {system}", err=True)
            if app.is_embedded():
                wait_for(rt, request_id, 120, show=True)


# -- operations ------------------------------------------------------------------------------

@main.command("check")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def check_cmd(ctx: click.Context, as_json: bool) -> None:
    """Validate settings and data map against the live systems and the ledger."""
    with errors_to_exit():
        settings = load_settings(ctx.obj.get("config"))
        rt = Runtime(settings)
        results: dict[str, Any] = {}
        try:
            with rt.engine.connect() as conn:
                conn.execute(sa.text("SELECT 1"))
            results["ledger"] = {"ok": True, "problems": [], "warnings": []}
        except OperationalError:
            results["ledger"] = {"ok": False, "problems": ["ledger database unreachable"], "warnings": []}
        if settings.redis_url:
            import redis

            try:
                redis.Redis.from_url(settings.redis_url, socket_connect_timeout=3).ping()
                results["broker"] = {"ok": True, "problems": [], "warnings": []}
            except redis.RedisError:
                results["broker"] = {"ok": False, "problems": ["redis broker unreachable"], "warnings": []}
        for name, connector in rt.connectors().items():
            health = connector.check()
            results[name] = {"ok": health.ok, "problems": health.problems, "warnings": health.warnings}
        rt.close()
        ok = all(r["ok"] for r in results.values())

        def human() -> None:
            for name, r in results.items():
                click.echo(f"{name:<14} {'ok' if r['ok'] else 'FAILED'}")
                for p in r["problems"]:
                    click.echo(f"  problem: {p}")
                for w in r["warnings"]:
                    click.echo(f"  warning: {w}")

        emit({"ok": ok, "systems": results}, as_json, human)
        if not ok:
            sys.exit(EXIT_FAILED)


@main.command("worker")
@click.option("--processes", type=int, help="Worker processes (default from settings).")
@click.option("--threads", type=int, help="Threads per process (default from settings).")
@click.pass_context
def worker_cmd(ctx: click.Context, processes: int | None, threads: int | None) -> None:
    """Run Dramatiq workers (with the sweeper) on the configured Redis broker."""
    with errors_to_exit():
        settings = load_settings(ctx.obj.get("config"))
        if not settings.redis_url:
            fail("`dsar worker` needs a Redis broker (broker.url = redis://...); the embedded stub:// broker "
                 "runs inside each command", EXIT_CONFIG)
        runtime(ctx)  # validates the data map and upgrades the ledger once, before workers fork
        env = dict(os.environ, DSAR_SWEEPER="1", DSAR_SCHEMA_UPGRADED="1",
                   dramatiq_worker_timeout=str(settings.worker.poll_ms))
        if ctx.obj.get("config"):
            env["DSAR_CONFIG"] = str(Path(ctx.obj["config"]).resolve())
        argv = [sys.executable, "-m", "dramatiq", "workers.actors", "--queues", "dsar",
                "--processes", str(processes or settings.worker.processes),
                "--threads", str(threads or settings.worker.threads)]
        os.execve(sys.executable, argv, env)


@main.command("sweep")
@click.pass_context
def sweep_cmd(ctx: click.Context) -> None:
    """Re-wake lost work once (workers also do this every sweep_interval_seconds)."""
    with errors_to_exit():
        from workers.actors import WAKE

        counts = pipeline.sweep(runtime(ctx), WAKE)
        click.echo(orjson.dumps(counts).decode())


@main.command("db-upgrade")
@click.pass_context
def db_upgrade_cmd(ctx: click.Context) -> None:
    """Create or upgrade the ledger schema (every command also does this on start)."""
    with errors_to_exit():
        runtime(ctx)
        click.echo("ledger schema is up to date", err=True)


@main.command("demo")
@click.pass_context
def demo_cmd(ctx: click.Context) -> None:
    """Seed sample systems and run an access and an erasure request through the whole pipeline."""
    from workers.demo import run_demo

    with errors_to_exit():
        sys.exit(run_demo(ctx))


# Commands of the other parts register themselves on `main` when imported.
from workers.cli import api, bundles, schedule  # noqa: E402, F401
