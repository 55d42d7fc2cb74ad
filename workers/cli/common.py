"""The `dsar` group and what its command modules share: exit codes, errors, runtime, output, waiting.

Output is for people; with --json, for scripts (one JSON document on stdout).

Exit codes: 0 ok; 1 finished with errors (a failed system, a failed check); 2 bad input;
3 configuration or data-map error; 4 unknown request; 5 a service is unreachable (ledger,
broker); 6 timed out waiting; 7 not ready (no bundle yet, or it expired); 8 conflict (the ticket
made a request of another type already, or the request's state does not allow the action: denying a
cancelled request, retrying a completed one).

Command modules import from here; this module imports none of them (workers/cli/__init__.py does).
"""

from __future__ import annotations

import getpass
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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
from discovery.engine.ledger import OPEN_STATUSES, Request, RequestStatus, SystemHit, Task
from discovery.engine.runtime import Runtime
from discovery.engine.settings import ConfigError, load_settings

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_CONFIG, EXIT_NOT_FOUND, EXIT_UNAVAILABLE, EXIT_TIMEOUT, EXIT_NOT_READY = range(8)
EXIT_CONFLICT = 8


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
    except (pipeline.TicketConflict, pipeline.StateConflict) as exc:
        click.echo(f"dsar: {exc}", err=True)
        sys.exit(EXIT_CONFLICT)
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
        from workers.app import broker_trouble

        if broker_trouble(exc):
            click.echo(f"dsar: broker unreachable ({type(exc).__name__})", err=True)
            sys.exit(EXIT_UNAVAILABLE)
        raise


class RecordingWakeups:
    """Wake-ups that keep a failure to hand a request to the broker instead of raising it: the request is written
    by then, and the operator must get its id (the sweeper re-wakes it once workers reach the broker again)."""

    def __init__(self, inner: pipeline.Wakeups) -> None:
        self.inner = inner
        self.failed: BaseException | None = None

    def _send(self, fn: Callable[[Any], None], arg: Any) -> None:
        try:
            fn(arg)
        except Exception as exc:
            from workers.app import broker_trouble

            if not broker_trouble(exc):
                raise
            self.failed = exc

    def discover(self, request_id: str) -> None:
        self._send(self.inner.discover, request_id)

    def execute(self, task_id: int) -> None:
        self._send(self.inner.execute, task_id)

    def merge(self, request_id: str) -> None:
        self._send(self.inner.merge, request_id)


def actor_or_user(actor: str | None) -> str:
    """Who acts, for the audit log: --actor, else the OS user; never a blank or made-up name."""
    if actor is not None:
        if not actor.strip():
            fail("--actor must name who acts", EXIT_USAGE)
        return actor.strip()
    try:
        user = getpass.getuser()
    except (OSError, KeyError):
        user = ""
    if not user.strip():
        fail("cannot tell who you are (no OS user name); give --actor NAME", EXIT_USAGE)
    return user.strip()


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



# -- waiting and status (shared by the request commands and the demo) ---------------------------

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


def load_request(rt: Runtime, request_id: str) -> tuple[Request, list[Task]]:
    with rt.sessions() as s:
        req = s.get(Request, request_id)
        if req is None:
            fail(f"unknown request {request_id}", EXIT_NOT_FOUND)
        tasks = list(s.scalars(sa.select(Task).where(Task.request_id == request_id).order_by(Task.id)))
    return req, tasks


def status_data(rt: Runtime, request_id: str) -> dict[str, Any]:
    req, tasks = load_request(rt, request_id)
    now = rt.clock()
    with rt.sessions() as s:  # systems discovery could not search, by name, with the one-line reason
        locate_errors = dict(s.execute(sa.select(SystemHit.system, SystemHit.error).where(
            SystemHit.request_id == request_id, SystemHit.error.is_not(None)).order_by(SystemHit.system)).all())
    return {
        "id": req.id, "type": req.type, "status": req.status, "ticket": req.ticket_ref, "systems": req.systems,
        "language": req.language,
        "received_at": req.received_at.isoformat(), "due_at": req.due_at.isoformat(),
        "days_left": (req.due_at - now).days if req.status in OPEN_STATUSES else None,
        "completed_at": req.completed_at.isoformat() if req.completed_at else None,
        "bundle": req.bundle_path, "error": req.error, "locate_errors": locate_errors,
        "identifiers": pipeline.identifiers(rt, request_id),
        "tasks": [{
            "system": t.system, "action": t.action, "status": t.status, "attempts": t.attempts,
            "entities": t.entities, "error": t.error, "records": _records(t),
            "retry_at": t.retry_at.isoformat() if t.retry_at else None,  # waiting: a system asked to wait
            "changed": (t.result or {}).get("changed"), "held": (t.result or {}).get("held"),
            "manual_steps": (t.result or {}).get("manual_steps"),
            "skipped": (t.result or {}).get("skipped") or None,
        } for t in tasks],
    }


def _records(t: Task) -> int | None:
    if t.action != "export" or not t.result:
        return None
    return sum(e["records"] for e in t.result.get("entities", {}).values())

