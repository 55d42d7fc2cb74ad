"""`dsar demo`: the whole pipeline on embedded defaults, on a bare machine.

Seeds a sample account database and a billing store (SQLite, invoice PDFs in a local S3 server
when SeaweedFS is installed), starts local simulators of the four vendor APIs
(FreshChat, Mautic, SALESmanago, Matomo: sandbox.launch) and points the run at a data map that
enables them, then runs an access and an erasure request for the sample person through the real
pipeline (ledger, broker, workers, bundle) and shows what happened in every system. Manual steps
the erasure leaves are confirmed by the demo itself, as a person would after doing them. Only the
demo fills in its own throwaway secrets when they are not set.
"""

from __future__ import annotations

import os
import zipfile
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import click
import orjson
import sqlalchemy as sa

from sandbox import accounts_db, billing_db
from sandbox.launch import Sandbox
from sandbox.people import JANE
from sandbox.s3 import ACCESS_KEY, SECRET_KEY, LocalS3, S3Unavailable
from sandbox.s3 import client as s3_client
from workers.inprocess import in_process_worker_if_embedded

DEMO_KEY = "demo-only-secret-key-not-for-production"
# What a person would have done for each system's manual step; the demo confirms with these notes.
MANUAL_NOTES = {
    "freshchat": "Forgot the contact in FreshChat (Contacts > Forget)",
    "mautic": "Deleted the email_stats, page_hits and form_submissions rows left with lead_id NULL in the "
              "Mautic database",
    "salesmanago": "Deleted the contact permanently in SALESmanago (Contacts > removed contacts)",
}


def run_demo(ctx: click.Context) -> int:
    from workers.cli import common as cli

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

    with Sandbox(work / "sandbox") as sandbox, ExitStack() as stack:
        # The vendor systems now point at the simulators; their credentials are the simulators' own.
        os.environ["DSAR_DATA_MAP_PATH"] = str(sandbox.datamap_path)
        os.environ.update(sandbox.env())
        billing_note = _start_billing(work, sandbox.datamap_path, stack)
        rt = cli.runtime(ctx)
        s = rt.settings
        click.echo(f"dsar demo: ledger {s.ledger.url}, broker {s.broker.url} (in-process), archive {s.archive.path}")
        click.echo("Seeded the sample account database: " + ", ".join(f"{n} {t}" for t, n in seeded.items()))
        click.echo(billing_note)
        click.echo("Started the vendor simulators: " + ", ".join(f"{n} {u}" for n, u in sandbox.urls.items()))
        click.echo(f"Systems in the data map ({sandbox.datamap_path}): " + ", ".join(rt.connectors()))

        from workers import app

        with in_process_worker_if_embedded(app.is_embedded()):
            click.echo(f"\n1/2  Access request for the sample person ({JANE.email})")
            access = _run(ctx, "access")
            _show_access(access)
            click.echo(f"\n2/2  Erasure request for {JANE.email}")
            erasure = _run(ctx, "erasure")
            _show_erasure(erasure)
            _show_left(sandbox)
            if erasure["status"] == "awaiting_manual":
                erasure = _confirm_manual_steps(ctx, erasure)
            _show_scheduled(ctx, erasure["id"])
    click.echo(f"\nAccess: {access['status']}.  Erasure: {erasure['status']}.")
    click.echo("Try: dsar status " + access["id"] + f"   |   dsar download {access['id']} -o access.zip"
               + "\n(with DSAR_LEDGER_URL and friends as set by the demo; see README)")
    return 0 if access["status"] == "completed" and erasure["status"] == "completed" else 1


def _start_billing(work: Path, datamap: Path, stack: ExitStack) -> str:
    """The billing store: a SQLite database and invoice PDFs in a local S3 server (SeaweedFS)."""
    try:
        server = stack.enter_context(LocalS3(work / "s3"))
    except S3Unavailable as exc:
        return f"Billing store left out: {exc}"
    billing_path = work / "billing.db"
    billing_path.unlink(missing_ok=True)
    os.environ["DSAR_BILLING_DB_URL"] = f"sqlite:///{billing_path}"
    os.environ["DSAR_BILLING_S3_ACCESS_KEY"], os.environ["DSAR_BILLING_S3_SECRET_KEY"] = ACCESS_KEY, SECRET_KEY
    engine = sa.create_engine(os.environ["DSAR_BILLING_DB_URL"])
    billing_db.create(engine)
    seeded = billing_db.seed(engine)
    s3 = s3_client(server.url)
    bucket = "dsar-demo-invoices"
    if bucket in {b["Name"] for b in s3.list_buckets().get("Buckets", [])}:
        for obj in s3.list_objects_v2(Bucket=bucket).get("Contents", []):
            s3.delete_object(Bucket=bucket, Key=obj["Key"])
    else:
        s3.create_bucket(Bucket=bucket)
    uploaded = billing_db.upload_invoices(s3, bucket, engine)
    engine.dispose()
    billing_db.enable_billing(datamap, bucket=bucket, endpoint_url=server.url,
                              access_key_env="DSAR_BILLING_S3_ACCESS_KEY", secret_key_env="DSAR_BILLING_S3_SECRET_KEY")
    return ("Seeded the sample billing store: " + ", ".join(f"{n} {t}" for t, n in seeded.items())
            + f"; {len(uploaded)} invoice PDFs in S3 ({server.url}, bucket {bucket})")


def _show_access(access: dict[str, Any]) -> None:
    bundle = access["bundle"]
    if not bundle:
        click.echo(f"     No bundle (status {access['status']}): {access['error'] or ''}")
        return
    from discovery.bundle.archive import archive_store
    from workers import app

    with archive_store(app.settings()).open_uri(bundle) as fh, zipfile.ZipFile(fh) as zf:
        manifest = orjson.loads(zf.read("manifest.json"))
        names = [n for n in zf.namelist() if n.startswith(("data/", "files/"))]
    click.echo(f"     Bundle: {bundle}")
    click.echo(f"     {manifest['totals']['records']} records in {len(names)} files, per system:")
    for system, entry in manifest["systems"].items():
        entities = entry["entities"]
        n = sum(e["records"] for e in entities.values())
        detail = ", ".join(f"{name} {e['records']}" for name, e in entities.items() if e["records"])
        reasons = "; ".join(entry.get("reasons") or [])
        click.echo(f"       {system:<12} {entry['status']:<10} {n:>4} records  ({detail or reasons})")
    learned = [i for i in manifest["subject"]["identifiers"] if i["source"] != "request"]
    click.echo("     Identifiers learned beyond the e-mail, and where each came from (each was then used to "
               "search every system that accepts it; only the person's own records teach one):")
    for i in learned:
        click.echo(f"       {i['type']:<24} {i.get('via') or i['source']}")


def _show_erasure(erasure: dict[str, Any]) -> None:
    click.echo("     What the erasure did, per system:")
    for task in erasure["tasks"]:
        changed = ", ".join(f"{entity} {n}" for entity, n in (task["changed"] or {}).items() if n)
        outcome = changed or task["error"] or "nothing to change"
        click.echo(f"       {task['system']:<12} {task['status']:<16} {outcome}")
        for h in task["held"] or []:
            click.echo(f"       {'':<12} kept: {h['entity']} {h['records']}, restricted until "
                       f"{(h['until'] or '?')[:10]}: {h['reason']}")
        for step in task["manual_steps"] or []:
            click.echo(f"       {'':<12} manual step: {step}")
    if erasure["bundle"]:
        click.echo(f"     Receipts bundle: {erasure['bundle']}")


def _show_left(sandbox: Sandbox) -> None:
    left = {name: kinds for name, kinds in sandbox.holdings(JANE.email).items() if kinds}
    if not left:
        click.echo("     Left of the person in the vendor simulators: nothing")
        return
    click.echo("     Left of the person in the vendor simulators:")
    for name, kinds in left.items():
        click.echo(f"       {name:<12} " + ", ".join(f"{k} {n}" for k, n in kinds.items()))


def _show_scheduled(ctx: click.Context, request_id: str) -> None:
    """The erasures recorded for the days the legal holds end (run by `dsar scheduler` when due)."""
    from discovery.engine.ledger import ScheduledAction
    from workers.cli import common as cli

    with cli.runtime(ctx).sessions() as s:
        actions = list(s.scalars(sa.select(ScheduledAction).where(ScheduledAction.source_request_id == request_id)
                                 .order_by(ScheduledAction.due_at)))
    if actions:
        click.echo("     Scheduled for when the holds end (`dsar schedule list`, run by `dsar scheduler`):")
        for a in actions:
            click.echo(f"       #{a.id} {a.kind} due {a.due_at:%Y-%m-%d}: {a.reason}")


def _confirm_manual_steps(ctx: click.Context, erasure: dict[str, Any]) -> dict[str, Any]:
    from discovery.engine import pipeline
    from workers.actors import WAKE
    from workers.cli import common as cli

    rt = cli.runtime(ctx)
    systems = [t["system"] for t in erasure["tasks"] if t["status"] == "awaiting_manual"]
    click.echo("     The request awaits manual steps. A person would do them, then run `dsar confirm`; "
               "the demo confirms them now:")
    for system in systems:
        note = MANUAL_NOTES.get(system, f"Did the manual step in {system}") + " (confirmed by the demo)"
        pipeline.confirm_manual(rt, WAKE, erasure["id"], system, note, actor="demo")
        click.echo(f"       dsar confirm {erasure['id']} --system {system} --note \"{note}\"")
    cli.wait_for(rt, erasure["id"], 120, show=True)
    done = cli.status_data(rt, erasure["id"])
    click.echo(f"     Erasure {done['status']} after the manual steps were confirmed (audited, actor 'demo')"
               + (f"; receipts: {done['bundle']}" if done["bundle"] else ""))
    return done


def _run(ctx: click.Context, request_type: str) -> dict[str, Any]:
    from discovery.engine import pipeline
    from workers.actors import WAKE
    from workers.cli import common as cli

    rt = cli.runtime(ctx)
    submitted = pipeline.submit(rt, WAKE, request_type, JANE.email, ticket=f"DEMO-{request_type}", actor="demo")
    cli.wait_for(rt, submitted.request.id, 120, show=True)
    return cli.status_data(rt, submitted.request.id)
