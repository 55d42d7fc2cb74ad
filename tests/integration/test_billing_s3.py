"""The billing store: rows in PostgreSQL, invoice PDFs in a real S3 server, driven through the pipeline
with a controllable clock (holds, scheduled hold ends)."""

from __future__ import annotations

import zipfile
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
import sqlalchemy as sa

from connectors.base import ConnectorContext, PermanentError
from connectors.s3_files import RESTRICTED_TAG, KeyTemplate, S3Files, S3Settings
from connectors.sql_map import parse_system
from discovery.bundle.archive import local_path
from discovery.engine import db
from discovery.engine.ledger import Request, ScheduledAction, Task
from discovery.engine.runtime import Runtime
from discovery.engine.settings import load_settings
from discovery.schedule import scheduler
from sandbox import billing_db
from sandbox.people import JANE, JOHN
from tests.conftest import ROOT, SECRET, _s3_client, seed_accounts, write_config
from tests.helpers import SyncWakeups, rows

pytestmark = pytest.mark.integration

S3_KEYS = {"DSAR_BILLING_S3_ACCESS_KEY": "dsar-test-access", "DSAR_BILLING_S3_SECRET_KEY": "dsar-test-secret-key"}
JANE_CUSTOMER = 1


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def make_world(tmp_path: Path, pg_database: Callable[[], str], s3_server: dict[str, str], bucket: str,
               datamap_bucket: str | None = None) -> dict[str, Any]:
    t0 = datetime.now(UTC)
    ledger, accounts_url, billing_url = pg_database(), pg_database(), pg_database()
    accounts = seed_accounts(accounts_url)
    billing = sa.create_engine(billing_url)
    billing_db.create(billing, drop=True)
    billing_db.seed(billing, now=t0)
    s3 = _s3_client()
    files = billing_db.upload_invoices(s3, bucket, billing)
    billing_db.enable_billing(ROOT / "config" / "datamap.yaml", target=tmp_path / "datamap.yaml",
                              bucket=datamap_bucket or bucket, endpoint_url=s3_server["endpoint_url"],
                              region=s3_server["region"], access_key_env="DSAR_BILLING_S3_ACCESS_KEY",
                              secret_key_env="DSAR_BILLING_S3_SECRET_KEY")
    config = write_config(tmp_path, ledger)
    environ = {"DSAR_SECRET_KEY": SECRET, "DSAR_ACCOUNTS_DB_URL": accounts_url, "DSAR_BILLING_DB_URL": billing_url,
               **S3_KEYS}
    clock = Clock(t0)
    rt = Runtime(load_settings(config, environ), env=environ, now=clock)
    db.upgrade(rt.engine)
    rt.completion_hooks.append(scheduler.record_hold_ends)  # as workers.app.setup registers it
    wake = SyncWakeups()
    wake.rt = rt
    return {"rt": rt, "wake": wake, "clock": clock, "billing": billing, "accounts": accounts, "s3": s3,
            "bucket": bucket, "files": files, "t0": t0}


@pytest.fixture
def world(tmp_path: Path, pg_database: Callable[[], str], s3_server: dict[str, str],
          s3_bucket: str) -> Iterator[dict[str, Any]]:
    w = make_world(tmp_path, pg_database, s3_server, s3_bucket)
    yield w
    w["rt"].close()
    w["billing"].dispose()
    w["accounts"].dispose()


def run(w: dict[str, Any], request_type: str, email: str = JANE.email) -> Request:
    submitted = scheduler.pipeline.submit(w["rt"], w["wake"], request_type, email,
                                          ticket=f"T-B-{request_type}", actor="test")
    w["wake"].drain()
    with w["rt"].sessions() as s:
        req = s.get(Request, submitted.request.id)
        assert req is not None
        return req


def keys_of(w: dict[str, Any], customer_id: int) -> list[str]:
    return sorted(k for k in w["files"] if k.startswith(f"invoices/{customer_id}/"))


def tag(w: dict[str, Any], key: str) -> str | None:
    tags = w["s3"].get_object_tagging(Bucket=w["bucket"], Key=key)["TagSet"]
    return next((t["Value"] for t in tags if t["Key"] == RESTRICTED_TAG), None)


def exists(w: dict[str, Any], key: str) -> bool:
    return bool(w["s3"].list_objects_v2(Bucket=w["bucket"], Prefix=key).get("KeyCount"))


def jane_invoices(w: dict[str, Any]) -> list[dict[str, Any]]:
    return rows(w["billing"], "SELECT id, number, invoice_date, processing_restricted FROM invoices "
                              f"WHERE customer_id = {JANE_CUSTOMER} ORDER BY invoice_date")


def test_access_bundle_holds_the_billing_rows_and_the_invoice_files_byte_for_byte(world: dict[str, Any]) -> None:
    req = run(world, "access")
    assert req.status == "completed", req.error
    with zipfile.ZipFile(local_path(req.bundle_path)) as zf:
        manifest = orjson.loads(zf.read("manifest.json"))
        invoices = orjson.loads(zf.read("data/billing/invoices.json"))
        lines = orjson.loads(zf.read("data/billing/invoice_lines.json"))
        customers = orjson.loads(zf.read("data/billing/customers.json"))
        addresses = orjson.loads(zf.read("data/billing/billing_addresses.json"))
        entries = manifest["systems"]["billing"]["files"]
        contents = {e["record_id"]: zf.read(e["file"]) for e in entries}
        everything = b"".join(zf.read(n) for n in zf.namelist())
    expected = jane_invoices(world)
    assert [i["number"] for i in invoices] == [i["number"] for i in sorted(expected, key=lambda r: r["id"])]
    assert len(lines) == 2 * len(expected) and {line["invoice_id"] for line in lines} == {i["id"] for i in expected}
    assert [c["id"] for c in customers] == [JANE_CUSTOMER] and customers[0]["vat_number"]
    assert len(addresses) == 1
    # One PDF per invoice, identical to what is in S3, and nobody else's.
    assert len(entries) == len(expected) == 3
    by_number = {k.rsplit("/", 1)[-1].removesuffix(".pdf"): k for k in keys_of(world, JANE_CUSTOMER)}
    for invoice in expected:
        body = contents[str(invoice["id"])]
        assert body == world["files"][by_number[invoice["number"]]]
        assert body.startswith(b"%PDF-1.4") and f"Invoice {invoice['number']}".encode() in body
    assert all(e["content_type"] == "application/pdf" and e["size"] > 0 for e in entries)
    assert JOHN.last_name.encode() not in everything and b"Decoy" not in everything


def test_erasure_restricts_held_rows_and_files_erases_the_rest_and_schedules_the_hold_ends(
        world: dict[str, Any]) -> None:
    others_before = {k: world["files"][k] for k in world["files"] if not k.startswith(f"invoices/{JANE_CUSTOMER}/")}
    old, *held = jane_invoices(world)
    req = run(world, "erasure")
    assert req.status == "completed", req.error

    # Rows: the old invoice and its lines are gone; the two inside the hold are kept, restricted.
    assert [i["number"] for i in jane_invoices(world)] == [h["number"] for h in held]
    assert all(i["processing_restricted"] for i in jane_invoices(world))
    kept_lines = rows(world["billing"], "SELECT invoice_id, processing_restricted FROM invoice_lines "
                                        f"WHERE invoice_id IN ({old['id']}, {held[0]['id']}, {held[1]['id']})")
    assert sorted({r["invoice_id"] for r in kept_lines}) == sorted(h["id"] for h in held)
    assert len(kept_lines) == 4 and all(r["processing_restricted"] for r in kept_lines)
    customer = rows(world["billing"], f"SELECT * FROM customers WHERE id = {JANE_CUSTOMER}")[0]
    assert customer["email"].startswith("erased-") and customer["first_name"] == "[redacted]"
    assert customer["vat_number"] is None and customer["phone"] is None
    assert customer["account_id"] == int(JANE.account_id)  # how the held invoices are found when the hold ends
    assert rows(world["billing"], f"SELECT id FROM billing_addresses WHERE customer_id = {JANE_CUSTOMER}") == []

    # Files: the old PDF deleted; the held ones kept, tagged with the day their hold ends.
    old_key, *held_keys = [k for n in (old, *held) for k in keys_of(world, JANE_CUSTOMER) if n["number"] in k]
    assert not exists(world, old_key)
    for invoice, key in zip(held, held_keys, strict=True):
        assert exists(world, key)
        assert tag(world, key) == _add5(invoice["invoice_date"]).isoformat()
    for key, body in others_before.items():  # everyone else's files untouched
        assert world["s3"].get_object(Bucket=world["bucket"], Key=key)["Body"].read() == body
        assert tag(world, key) is None

    # The receipt lists what was kept and until when; erased counts include the file.
    with zipfile.ZipFile(local_path(req.bundle_path)) as zf:
        receipt = orjson.loads(zf.read("receipts/billing-erase.json"))
    assert receipt["changed"] == {"invoice_lines": 2, "invoices": 1, "invoices.files": 1, "billing_addresses": 1,
                                  "customers": 1}
    held_by = {h["entity"]: h for h in receipt["held"]}
    assert held_by["invoices"]["records"] == 2 and held_by["invoices"]["files"] == 2
    assert held_by["invoice_lines"]["records"] == 4
    assert "Bookkeeping Act" in held_by["invoices"]["reason"]
    ends = sorted(_add5(h["invoice_date"]) for h in held)
    assert [e["until"][:10] for e in held_by["invoices"]["ends"]] == [d.isoformat() for d in ends]
    assert held_by["invoices"]["until"][:10] == ends[-1].isoformat()

    # One scheduled erasure per day a hold ends (accounts' orders end the same days as the invoices).
    with world["rt"].sessions() as s:
        actions = list(s.scalars(sa.select(ScheduledAction).order_by(ScheduledAction.due_at)))
    assert [a.kind for a in actions] == [scheduler.KIND_HOLD_END] * 2
    assert [a.due_at.date() for a in actions] == [d + timedelta(days=1) for d in ends]
    assert all(a.status == "scheduled" and a.source_request_id == req.id for a in actions)
    assert {(h["system"], h["entity"]) for h in actions[0].details["holds"]} == \
        {("billing", "invoices"), ("billing", "invoice_lines"), ("accounts", "orders")}
    assert {"type": "account_id", "value": JANE.account_id} in actions[0].details["identities"]


def test_when_the_clock_passes_each_hold_the_scheduler_erases_what_it_kept(world: dict[str, Any]) -> None:
    rt, wake, clock = world["rt"], world["wake"], world["clock"]
    _old, first, second = jane_invoices(world)
    first_key, second_key = (k for n in (first, second) for k in keys_of(world, JANE_CUSTOMER) if n["number"] in k)
    run(world, "erasure")

    assert scheduler.run_due(rt, wake, "test-scheduler", 100).claimed == 0  # nothing due yet
    clock.now = datetime.combine(_add5(first["invoice_date"]) + timedelta(days=1), datetime.min.time(), UTC)
    result = scheduler.run_due(rt, wake, "test-scheduler", 100)
    assert (result.claimed, result.requests) == (1, 1)
    wake.drain()
    assert [i["number"] for i in jane_invoices(world)] == [second["number"]]
    assert not exists(world, first_key) and exists(world, second_key)
    assert rows(world["billing"], f"SELECT count(*) n FROM invoice_lines WHERE invoice_id = {first['id']}") == \
        [{"n": 0}]
    orders = rows(world["accounts"], f"SELECT ordered_at FROM orders WHERE user_id = {JANE.account_id}")
    assert len(orders) == 1  # the accounts system's held orders follow the same days

    clock.now = datetime.combine(_add5(second["invoice_date"]) + timedelta(days=1), datetime.min.time(), UTC)
    result = scheduler.run_due(rt, wake, "test-scheduler", 100)
    assert (result.claimed, result.requests) == (1, 1)
    wake.drain()
    assert jane_invoices(world) == [] and not exists(world, second_key)
    assert rows(world["accounts"], f"SELECT id FROM orders WHERE user_id = {JANE.account_id}") == []
    with rt.sessions() as s:
        actions = list(s.scalars(sa.select(ScheduledAction).order_by(ScheduledAction.due_at)))
        requests = {r.id: r for r in s.scalars(sa.select(Request).where(Request.source == "schedule"))}
        erase_tasks = list(s.scalars(sa.select(Task).where(Task.request_id.in_(requests), Task.action == "erase")))
    assert all(a.status == "done" and a.request_id in requests for a in actions) and len(actions) == 2
    assert all(r.status == "completed" for r in requests.values())
    assert all(not (t.result or {}).get("held") for t in erase_tasks if t.system == "billing"
               and t.request_id == actions[-1].request_id)


def test_restriction_tags_the_files_and_lifting_removes_the_tag(world: dict[str, Any]) -> None:
    assert run(world, "restriction").status == "completed"
    assert {tag(world, k) for k in keys_of(world, JANE_CUSTOMER)} == {"yes"}
    assert all(tag(world, k) is None for k in world["files"] if not k.startswith(f"invoices/{JANE_CUSTOMER}/"))
    assert run(world, "lift_restriction").status == "completed"
    assert {tag(world, k) for k in keys_of(world, JANE_CUSTOMER)} == {None}


def test_a_bucket_that_does_not_exist_fails_the_task_and_the_check_with_a_clear_error(
        tmp_path: Path, pg_database: Callable[[], str], s3_server: dict[str, str], s3_bucket: str) -> None:
    w = make_world(tmp_path, pg_database, s3_server, s3_bucket, datamap_bucket="dsar-no-such-bucket-0042")
    try:
        req = run(w, "access")
        assert req.status == "completed_with_errors"
        assert "billing" in (req.error or "") and "S3 bucket 'dsar-no-such-bucket-0042' does not exist" in req.error
        health = w["rt"].connector("billing").check()
        assert not health.ok and any("dsar-no-such-bucket-0042" in p for p in health.problems)
    finally:
        w["rt"].close()


def test_key_templates_match_exact_keys_and_whole_folders_only(s3_server: dict[str, str], s3_bucket: str) -> None:
    client = _s3_client()
    for key in ("inv/7/INV-1.pdf", "inv/7/INV-10.pdf", "docs/1/a.pdf", "docs/1/sub/b.pdf", "docs/10/c.pdf"):
        client.put_object(Bucket=s3_bucket, Key=key, Body=key.encode())
    files = S3Files("billing", S3Settings(bucket=s3_bucket, endpoint_url=s3_server["endpoint_url"],
                                          access_key_env="A", secret_key_env="S"),
                    ConnectorContext(env={"A": S3_KEYS["DSAR_BILLING_S3_ACCESS_KEY"],
                                          "S": S3_KEYS["DSAR_BILLING_S3_SECRET_KEY"]}))
    exact = KeyTemplate("inv/{customer_id}/{number}.pdf")
    assert [o.key for o in files.find(s3_bucket, exact, {"customer_id": 7, "number": "INV-1"})] == ["inv/7/INV-1.pdf"]
    assert files.find(s3_bucket, exact, {"customer_id": 7, "number": None}) == []  # no value: no file
    folder = KeyTemplate("docs/{id}/")
    assert sorted(o.key for o in files.find(s3_bucket, folder, {"id": 1})) == ["docs/1/a.pdf", "docs/1/sub/b.pdf"]
    with pytest.raises(PermanentError, match="S3 bucket 'dsar-missing-bucket-9' does not exist"):
        files.find("dsar-missing-bucket-9", exact, {"customer_id": 7, "number": "INV-1"})


@pytest.mark.parametrize(("change", "message"), [
    (lambda b: b.pop("s3"), "'files' needs the system's 's3' settings"),
    (lambda b: b["entities"]["invoices"]["files"].update(key="invoices/all.pdf"), "names no column"),
    (lambda b: b["entities"]["invoices"]["files"].update(key="invoices/{customer_id!r}.pdf"), "plain column name"),
    (lambda b: b["entities"]["invoice_lines"]["hold"].update({"from": "customers.created_at"}),
     "names an entity it does not reference"),
    (lambda b: b["entities"]["invoice_lines"]["hold"].update(years=3), "invoices is erased by delete"),
])
def test_the_data_map_refuses_inconsistent_files_and_holds(change: Callable[[dict[str, Any]], Any],
                                                          message: str) -> None:
    import yaml

    billing = yaml.safe_load((ROOT / "config" / "datamap.yaml").read_text())["systems"]["billing"]
    parse_system("billing", billing)  # the project's map is valid
    change(billing)
    with pytest.raises(PermanentError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_system("billing", billing)


def _add5(day: date) -> date:
    try:
        return day.replace(year=day.year + 5)
    except ValueError:  # 29 February, as the connector does it
        return day.replace(year=day.year + 5, day=28)
