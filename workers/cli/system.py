"""`dsar` commands for operating the service: check, worker, sweep, db-upgrade, demo."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import orjson
import sqlalchemy as sa
from sqlalchemy.exc import OperationalError

from discovery.engine import pipeline
from discovery.engine.datamap import record_gaps, untranslated
from discovery.engine.runtime import Runtime
from discovery.engine.settings import load_settings
from workers.cli.common import EXIT_CONFIG, EXIT_FAILED, emit, errors_to_exit, fail, main, runtime

if TYPE_CHECKING:
    from workers.heartbeat import Liveness


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
        if settings.broker.kind != "stub":
            from workers import heartbeat

            try:  # the broker answers (and the Redis of broker.redis_url, which keeps the beats beside RabbitMQ)
                found = heartbeat.liveness(settings)
                results["broker"] = {"ok": True, "problems": [], "warnings": []}
                results["workers"] = _workers_check(found)
            except heartbeat.Unreachable as exc:
                results["broker"] = {"ok": False, "problems": [str(exc)], "warnings": []}
        code = settings.requests.language
        missing = untranslated(rt.data_map, code)
        # not errors: the person still reads the text, in another language; `dsar ropa` still writes the record
        warnings = [f"{key}: no '{code}' text (requests.language); people would read another language's"
                    for key in missing] + record_gaps(rt.data_map)
        if warnings:
            results["data_map"] = {"ok": True, "problems": [], "warnings": warnings}
        for name, connector in rt.connectors().items():
            health = connector.check()
            results[name] = {"ok": health.ok, "problems": health.problems, "warnings": health.warnings}
            if rt.data_map.systems[name].info.kind == "sql" and health.ok:  # schema drift (dsar datamap diff)
                from discovery.mapping.diff import check_warnings  # the scanners: not for every `dsar` command

                results[name]["warnings"] += check_warnings(rt.data_map, name, rt.env)
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


def _workers_check(found: Liveness | None) -> dict[str, Any]:
    """Workers that ran and are all gone fail the check; none ever having run (a check before the first start) is a
    warning, as is none consuming on RabbitMQ without beats (it cannot tell). workers/heartbeat.py has the beats."""
    result: dict[str, Any] = {"ok": True, "problems": [], "warnings": []}
    if found is not None:
        result.update(alive=found.alive, last_seen=found.to_dict()["last_seen"])
        if found.problem:
            result["ok"] = found.last_seen is None
            result["warnings" if found.last_seen is None else "problems"].append(found.problem)
    return result


@main.command("worker")
@click.option("--processes", type=int, help="Worker processes (default from settings).")
@click.option("--threads", type=int, help="Threads per process (default from settings).")
@click.pass_context
def worker_cmd(ctx: click.Context, processes: int | None, threads: int | None) -> None:
    """Run Dramatiq workers (with the sweeper) on the configured broker's queue, restarting one that dies.

    SIGTERM or Ctrl-C stops them gracefully (running messages finish); a second one stops them at once.
    """
    from workers.supervisor import parent_argv

    with errors_to_exit():
        settings = load_settings(ctx.obj.get("config"))
        if settings.broker.kind == "stub":
            fail("`dsar worker` needs a Redis or RabbitMQ broker (broker.url = redis://... or amqp://...); the "
                 "embedded stub:// broker runs inside each command", EXIT_CONFIG)
        if settings.worker.poll_ms is not None:
            click.echo("warning: worker.poll_ms is no longer used (a message wakes an idle worker at once; "
                       "worker.idle_ms bounds how soon a stopping one notices); remove it", err=True)
        runtime(ctx).close()  # validates the data map and upgrades the ledger once, before the workers start
        env = dict(os.environ, DSAR_SWEEPER="1", DSAR_SCHEMA_UPGRADED="1")
        # glibc makes a malloc arena per thread that allocates (up to 8 per core): with a worker's threads that is
        # memory held for nothing between requests; two are plenty for a Python process (its GIL serialises most).
        env.setdefault("MALLOC_ARENA_MAX", "2")
        if ctx.obj.get("config"):
            env["DSAR_CONFIG"] = str(Path(ctx.obj["config"]).resolve())
        # Dramatiq's own metrics of the pool for Prometheus (docs/console.md), when worker.metrics_port is set
        argv = parent_argv(processes or settings.worker.processes, threads or settings.worker.threads,
                           settings.log_format, settings.worker.metrics_host, settings.worker.metrics_port)
        # This process has SQLAlchemy, the connectors and the whole CLI loaded (~100 MB); the supervisor that runs
        # for days needs none of it. Same pid (signals, scripts and service managers see no difference), a fresh
        # interpreter that imports only workers.supervisor; it gives up with the same one line and exit codes.
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(argv[0], argv, env)


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

