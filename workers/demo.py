"""`dsar demo`: the whole pipeline on embedded defaults, on a bare machine.

Seeds a sample account database (SQLite), then runs an access request and an erasure request
for the sample person through the real pipeline (ledger, broker, workers, bundle) and shows
what happened. Only the demo fills in its own throwaway secrets when they are not set.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Any

import click
import orjson
import sqlalchemy as sa

from sandbox import accounts_db
from sandbox.people import JANE

DEMO_KEY = "demo-only-secret-key-not-for-production"


def run_demo(ctx: click.Context) -> int:
    from workers import cli

    work = Path(os.environ.get("DSAR_DEMO_DIR", "var/demo")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("DSAR_SECRET_KEY", DEMO_KEY)
    os.environ.setdefault("DSAR_LEDGER_URL", f"sqlite:///{work / 'ledger.db'}")
    os.environ.setdefault("DSAR_ARCHIVE_PATH", str(work / "archive"))
    os.environ.setdefault("DSAR_ARCHIVE_STAGING_PATH", str(work / "staging"))
    accounts_path = work / "accounts.db"
    accounts_path.unlink(missing_ok=True)
    os.environ["DSAR_ACCOUNTS_DB_URL"] = f"sqlite:///{accounts_path}"

    engine = sa.create_engine(os.environ["DSAR_ACCOUNTS_DB_URL"])
    accounts_db.create(engine)
    seeded = accounts_db.seed(engine)
    engine.dispose()

    rt = cli.runtime(ctx)
    s = rt.settings
    click.echo(f"dsar demo: ledger {s.ledger.url}, broker {s.broker.url} (in-process), archive {s.archive.path}")
    click.echo("Seeded the sample account database: " + ", ".join(f"{n} {t}" for t, n in seeded.items()))

    from workers import app

    with cli.in_process_worker_if_embedded(app.is_embedded()):
        click.echo(f"\n1/2  Access request for the sample person ({JANE.email})")
        access = _run(ctx, "access")
        _show_access(access)
        click.echo(f"\n2/2  Erasure request for {JANE.email}")
        erasure = _run(ctx, "erasure")
        _show_erasure(erasure)
    click.echo("\nTry: dsar status " + access["id"] + f"   |   dsar download {access['id']} -o access.zip"
               + "\n(with DSAR_LEDGER_URL and friends as set by the demo; see README)")
    return 0 if access["status"] == "completed" and erasure["status"] == "completed" else 1


def _show_access(access: dict[str, Any]) -> None:
    bundle = access["bundle"]
    with zipfile.ZipFile(bundle) as zf:
        manifest = orjson.loads(zf.read("manifest.json"))
        names = [n for n in zf.namelist() if n.startswith("data/")]
    click.echo(f"     Bundle: {bundle}")
    click.echo(f"     {manifest['totals']['records']} records in {len(names)} files: " + ", ".join(names))
    learned = [i for i in manifest["subject"]["identifiers"] if i["source"] != "request"]
    click.echo("     Identifiers learned: " + ", ".join(f"{i['type']} (from {i['source']})" for i in learned))


def _show_erasure(erasure: dict[str, Any]) -> None:
    click.echo("     What the erasure changed:")
    for task in erasure["tasks"]:
        for entity, n in (task["changed"] or {}).items():
            click.echo(f"       {task['system']}.{entity}: {n} records erased")
        for h in task["held"] or []:
            click.echo(f"       {task['system']}.{h['entity']}: {h['records']} kept and restricted until "
                       f"{(h['until'] or '?')[:10]}: {h['reason']}")
        for step in task["manual_steps"] or []:
            click.echo(f"       manual step in {task['system']}: {step}")
    click.echo(f"     Receipts bundle: {erasure['bundle']}")


def _run(ctx: click.Context, request_type: str) -> dict[str, Any]:
    from discovery import pipeline
    from workers import cli
    from workers.actors import WAKE

    rt = cli.runtime(ctx)
    submitted = pipeline.submit(rt, WAKE, request_type, JANE.email, ticket="DEMO-1", actor="demo")
    cli.wait_for(rt, submitted.request.id, 120, show=True)
    return cli.status_data(rt, submitted.request.id)
