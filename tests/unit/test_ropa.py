"""The record of processing activities (Art. 30(1), `dsar ropa`): the data map's new keys and their validation,
every Art. 30(1) item for every system of config/datamap.yaml, and the four outputs (escaped, Norwegian, CLI)."""

from __future__ import annotations

import csv
import html
import io
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from babel.messages.pofile import read_po
from click.testing import CliRunner

from discovery.engine.bundles import bundle_view
from discovery.engine.datamap import DataMapError, load_data_map, record_gaps, untranslated
from discovery.i18n.languages import LANGUAGES, catalogue_path
from discovery.mapping import ropa
from tests.conftest import ROOT, _unavailable, dsar_env, write_config

PROJECT_MAP = ROOT / "config" / "datamap.yaml"
NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
SCRIPT = "<script>alert('x')</script>"
CHROMIUM = os.environ.get("DSAR_TEST_CHROMIUM", "/usr/bin/chromium")


def write_map(tmp_path: Path, controller: dict[str, Any] | None = None, **system: Any) -> Path:
    entry = {"kind": "matomo", "enabled": False, "title": "Analytics", **system}
    path = tmp_path / "datamap.yaml"
    path.write_text(yaml.safe_dump({"version": 1,
                                    "controller": {"name": "Example AS", "contact": "privacy@example.no",
                                                   **(controller or {})},
                                    "systems": {"web": entry}}, allow_unicode=True), encoding="utf-8")
    return path


def record(code: str = "en", path: Path = PROJECT_MAP) -> dict[str, Any]:
    return ropa.build_record(load_data_map(path), code, NOW)


# -- the data map's keys --------------------------------------------------------------------------


def test_the_new_keys_load_and_stay_out_of_connector_settings_and_the_bundle(tmp_path: Path) -> None:
    path = write_map(
        tmp_path, {"dpo": {"name": {"en": "DPO", "nb": "Personvernombud"}, "contact": "dpo@example.no"},
                   "joint_controllers": [{"name": "Partner AS", "contact": "p@example.no", "address": "Oslo"}],
                   "security_measures": ["TLS", {"en": "Backups", "nb": "Sikkerhetskopier"}]},
        data_subjects=["Visitors"], data_categories=[{"en": "Visits", "nb": "Besøk"}], recipients=["Staff"],
        transfers=[{"country": "United States", "safeguard": "SCCs (Art. 46(2)(c))", "recipient": "Vendor Inc."}])
    dm = load_data_map(path)
    info = dm.systems["web"].info
    assert info.transfers[0].safeguard == "SCCs (Art. 46(2)(c))" and info.data_subjects == ["Visitors"]
    assert dm.controller.dpo is not None and dm.controller.dpo.contact == "dpo@example.no"
    assert not {"data_subjects", "data_categories", "recipients", "transfers"} & set(dm.systems["web"].settings)
    view = bundle_view(dm, {}, "access")  # the person's bundle renders flat texts only: none of these in it
    assert "transfers" not in view.systems["web"] and "dpo" not in view.controller
    assert [g.split(":")[0] for g in record_gaps(dm)] == [  # dpo, measures, subjects, categories given
        "systems.web.purpose", "systems.web.legal_basis", "systems.web.retention", "systems.web.location"]


@pytest.mark.parametrize(("controller", "system", "message"), [
    ({}, {"transfers": [{"country": "US"}]}, "systems.web.transfers.0.safeguard: Field required"),
    ({}, {"transfers": [{"country": "US", "safeguard": "SCCs", "via": "x"}]},
     "systems.web.transfers.0.via: Extra inputs are not permitted"),
    ({}, {"transfers": {"country": "US"}}, "systems.web.transfers: Input should be a valid list"),
    ({}, {"data_subjects": "customers"}, "systems.web.data_subjects: Input should be a valid list"),
    ({}, {"recipients": [{"en": "Staff", "de": "Personal"}]},
     "systems.web.recipients.0: Value error, unknown language"),
    ({}, {"purpose": 5}, "systems.web.purpose: Input should be a valid string"),
    ({"dpo": {"name": "DPO"}}, {}, "controller.dpo.contact: Field required"),
    ({"dpo": "dpo@example.no"}, {}, "controller.dpo: Input should be a valid dictionary"),
    ({"security_measure": ["TLS"]}, {}, "controller.security_measure: Extra inputs are not permitted"),
    ({"joint_controllers": [{"name": "X", "contact": "x@example.no", "phone": "1"}]}, {},
     "controller.joint_controllers.0.phone: Extra inputs are not permitted"),
])
def test_a_wrong_shape_is_one_line_naming_the_system_and_key(
        tmp_path: Path, controller: dict[str, Any], system: dict[str, Any], message: str) -> None:
    with pytest.raises(DataMapError) as err:
        load_data_map(write_map(tmp_path, controller, **system))
    assert message in str(err.value) and "\n" not in str(err.value), str(err.value)


def test_check_warns_about_each_missing_art30_item(tmp_path: Path) -> None:
    gaps = record_gaps(load_data_map(write_map(tmp_path)))
    assert [g.split(":")[0] for g in gaps] == [
        "controller.dpo", "controller.security_measures", "systems.web.purpose", "systems.web.legal_basis",
        "systems.web.data_subjects", "systems.web.retention", "systems.web.location", "systems.web.data_categories"]
    assert record_gaps(load_data_map(PROJECT_MAP)) == []


def test_untranslated_finds_texts_inside_transfers_and_the_dpo(tmp_path: Path) -> None:
    path = write_map(tmp_path, {"dpo": {"name": {"en": "DPO"}, "contact": "dpo@example.no"}},
                     transfers=[{"country": {"en": "United States"}, "safeguard": "SCCs"}])
    assert untranslated(load_data_map(path), "nb") == ["controller.dpo", "systems.web.transfers"]
    assert untranslated(load_data_map(PROJECT_MAP), "nb") == []


# -- the record from the project's data map --------------------------------------------------------


def test_every_system_has_every_art30_item() -> None:
    dm = load_data_map(PROJECT_MAP)
    rec = record()
    c = rec["controller"]
    assert c["name"] and c["contact"] and c["dpo"]["name"] and c["dpo"]["contact"]  # (a)
    assert c["supervisory_authority"] and len(rec["security_measures"]) >= 3  # (g)
    assert [a["system"] for a in rec["activities"]] == list(dm.systems)
    for a in rec["activities"]:
        where = a["system"]
        assert a["title"] and a["purpose"] and a["legal_basis"], where  # (b)
        assert a["data_subjects"] and all(a["data_subjects"]), where  # (c)
        assert a["personal_data"] and all(a["personal_data"]), where  # (c)
        assert isinstance(a["recipients"], list) and isinstance(a["processors"], list), where  # (d)
        assert a["recipients"] or a["processors"], where
        assert all(t["country"] and t["safeguard"] for t in a["transfers"]), where  # (e)
        assert a["retention"], where  # (f)
        assert a["location"], where
    by_name = {a["system"]: a for a in rec["activities"]}
    # a SQL system's categories are its entities' `fields` categories, as the access answer lists them
    assert by_name["accounts"]["personal_data_by_entity"]["users"] == sorted(
        set(dm.systems["accounts"].settings["entities"]["users"]["fields"].values()))
    assert "contact details" in by_name["accounts"]["personal_data"]
    assert [h["entity"] for h in by_name["billing"]["retention_by_entity"]] == ["invoices", "invoice_lines"]
    assert by_name["freshchat"]["transfers"][0]["safeguard"] == "Standard contractual clauses (Art. 46(2)(c))"
    assert by_name["matomo"]["transfers"] == []


def test_json_is_the_record() -> None:
    rec = record("nb")
    assert orjson.loads(ropa.render(rec, "json")) == rec
    assert rec["language"] == "nb" and rec["title"] == "Protokoll over behandlingsaktiviteter"


def test_html_shows_each_purpose_in_the_language_escaped() -> None:
    dm = load_data_map(PROJECT_MAP)
    for code in LANGUAGES:
        page = ropa.render(record(code), "html").decode()
        assert f'<html lang="{code}">' in page
        for system in dm.systems.values():
            purpose = system.info.purpose
            text = purpose.get(code) if isinstance(purpose, dict) else purpose
            assert html.escape(str(text)) in page, (code, system.name)
    page = ropa.render(record(), "html").decode()
    # one self-contained page: no script, nothing fetched
    assert "<script" not in page and "src=" not in page and "<link" not in page and "http" not in page.split(
        "<body>")[0].replace("http-equiv", "")
    assert "@media print" in page


def test_a_purpose_with_markup_stays_text_in_every_format(tmp_path: Path) -> None:
    rec = record(path=write_map(tmp_path, purpose=SCRIPT, data_subjects=["=cmd|' /C calc'!A0"],
                                transfers=[{"country": "<b>US</b>", "safeguard": "SCCs *bold*"}]))
    page = ropa.render(rec, "html").decode()
    assert "<script>alert" not in page and "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    assert "<b>US" not in page and "&lt;b&gt;US&lt;/b&gt;" in page
    md = ropa.render(rec, "md").decode()
    assert "<script" not in md and "&lt;script&gt;" in md and r"SCCs \*bold\*" in md
    row = list(csv.reader(io.StringIO(ropa.render(rec, "csv").decode())))[1]
    assert SCRIPT in row  # CSV carries the text as it is, but never as a formula
    assert "'=cmd|' /C calc'!A0" in row


def test_csv_has_one_row_per_system_with_the_art30_columns() -> None:
    rows = list(csv.reader(io.StringIO(ropa.render(record(), "csv").decode("utf-8"))))
    assert rows[0] == ["System", "Processing activity", "Purpose of the processing", "Legal basis",
                       "Categories of data subjects", "Categories of personal data", "Categories of recipients",
                       "Processors", "Transfers to third countries and their safeguards", "Time limits for erasure",
                       "Where the data is stored", "Where the data comes from", "Data-subject requests",
                       "Controller", "Data protection officer",
                       "Technical and organisational security measures (Art. 32(1))"]
    assert [r[0] for r in rows[1:]] == list(load_data_map(PROJECT_MAP).systems)
    assert all(len(r) == len(rows[0]) and all(r) for r in rows[1:])  # every cell says something ("none")
    freshchat = dict(zip(rows[0], next(r for r in rows if r[0] == "freshchat"), strict=True))
    assert "Standard contractual clauses (Art. 46(2)(c))" in freshchat["Transfers to third countries and their "
                                                                        "safeguards"]
    assert freshchat["Processors"].startswith("Freshworks Inc.")


def _nb_headings() -> dict[str, str]:
    with catalogue_path("nb").open("rb") as f:
        cat = read_po(f, locale=LANGUAGES["nb"])
    found = {}
    for msgid in ropa.HEADINGS:
        message = cat.get(msgid)
        assert message is not None and message.string, msgid
        found[msgid] = str(message.string)
    return found


@pytest.mark.parametrize("fmt", ["html", "csv", "md"])
def test_norwegian_output_has_no_english_heading_left(fmt: str) -> None:
    out = ropa.render(record("nb"), fmt).decode()
    if fmt == "md":
        out = out.replace("\\", "")
    for msgid, msgstr in _nb_headings().items():
        if msgid == msgstr:
            continue
        assert msgid not in out, (fmt, msgid)
        shown = msgid not in (ropa.REPRESENTATIVE, ropa.JOINT)  # only when the map names one (this one does not)
        if shown and (fmt != "csv" or msgid in dict(ropa.COLUMNS).values()):
            assert html.escape(msgstr, quote=False) in out or msgstr in out, (fmt, msgstr)
    assert "none" not in out.split() and "not given" not in out


# -- the command ---------------------------------------------------------------------------------


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    config = write_config(tmp_path, f"sqlite:///{tmp_path / 'ledger.db'}")
    return dsar_env(config, f"sqlite:///{tmp_path / 'accounts.db'}")


def invoke(args: list[str], env: dict[str, str]) -> Any:
    from workers.cli import main

    return CliRunner().invoke(main, args, env=env, catch_exceptions=False)


def test_cli_writes_the_html_file_and_json_to_stdout(tmp_path: Path, env: dict[str, str]) -> None:
    target = tmp_path / "out" / "ropa.html"
    target.parent.mkdir()
    target.write_text("old")  # replaced, as `dsar download` replaces its file
    done = invoke(["ropa", "--format", "html", "-o", str(target)], env)
    assert done.exit_code == 0, done.output
    assert target.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    assert os.listdir(target.parent) == ["ropa.html"]  # no temporary file left
    for args in (["ropa", "--json"], ["ropa", "--format", "json"]):
        done = invoke(args, env)
        assert done.exit_code == 0 and orjson.loads(done.stdout)["activities"][0]["system"] == "accounts"
    csv_file = tmp_path / "ropa.csv"
    assert invoke(["ropa", "-o", str(csv_file), "--language", "nb"], env).exit_code == 0  # the suffix says csv
    assert csv_file.read_text(encoding="utf-8").startswith("System,Behandlingsaktivitet,")


def test_cli_a_bad_map_key_is_exit_3_with_one_line(tmp_path: Path, env: dict[str, str]) -> None:
    raw = yaml.safe_load((tmp_path / "datamap.yaml").read_text(encoding="utf-8"))
    raw["systems"]["freshchat"]["transfers"] = [{"country": "United States"}]
    (tmp_path / "datamap.yaml").write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")
    done = invoke(["ropa", "--json"], env)
    assert done.exit_code == 3 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and "systems.freshchat.transfers.0.safeguard: Field required" in done.stderr


@pytest.mark.parametrize(("args", "message"), [
    (["ropa", "--language", "de"], "unknown language 'de'"),
    (["ropa", "--json", "--format", "csv"], "--json writes JSON"),
    (["ropa", "-o", "/nonexistent/dir/ropa.html"], "cannot write /nonexistent/dir/ropa.html"),
])
def test_cli_bad_input_is_exit_2(env: dict[str, str], args: list[str], message: str) -> None:
    done = invoke(args, env)
    assert done.exit_code == 2 and message in done.stderr and done.stderr.count("\n") == 1, done.stderr


def test_the_page_renders_and_prints_in_chromium(tmp_path: Path) -> None:
    if not Path(CHROMIUM).exists():
        _unavailable("Chromium", f"{CHROMIUM} is missing: apt-get install -y chromium")
    from playwright.sync_api import sync_playwright

    page_file = tmp_path / "ropa.html"
    page_file.write_bytes(ropa.render(record("nb"), "html"))
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            page.goto(page_file.as_uri())
            headings = page.locator("h1, h2, h3").all_inner_texts()
            page.screenshot(path=str(tmp_path / "ropa-nb.png"), full_page=True)
            pdf = page.pdf(format="A4")
        finally:
            browser.close()
    assert headings[0] == "Protokoll over behandlingsaktiviteter" and "Behandlingsansvarlig" in headings
    assert pdf.startswith(b"%PDF") and (tmp_path / "ropa-nb.png").stat().st_size > 10_000


def test_check_warns_when_a_system_lacks_an_art30_item(tmp_path: Path, env: dict[str, str]) -> None:
    raw = yaml.safe_load((tmp_path / "datamap.yaml").read_text(encoding="utf-8"))
    del raw["systems"]["freshchat"]["data_subjects"]
    (tmp_path / "datamap.yaml").write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")
    done = invoke(["check", "--json"], env)
    warnings = orjson.loads(done.stdout)["systems"]["data_map"]["warnings"]
    assert [w for w in warnings if "Art. 30" in w] == [
        "systems.freshchat.data_subjects: not given (the record of processing, Art. 30(1), lists it)"]


def test_retention_per_system_is_the_machine_readable_rules_else_the_free_text(tmp_path: Path) -> None:
    """(f) from the same declarations as the bundle page and `dsar retention report`: each declared rule's sentence
    (SQL `retention:`, a vendor's `retention_rules:`), the free text only where no rule is declared."""
    rec = record()
    by_name = {a["system"]: a for a in rec["activities"]}
    assert by_name["matomo"]["retention_rules"] == [
        "visits: erased 5 years after the visit's last action (the privacy policy: website statistics are kept "
        "five years)"]
    assert by_name["freshchat"]["retention_rules"][0].startswith("conversations: kept until you ask us to delete it")
    assert by_name["salesmanago"]["retention_rules"][0].startswith("contact: erased when you withdraw your consent")
    assert any(r.startswith("orders: erased 5 years after ordered_at") for r in by_name["accounts"]["retention_rules"])
    rows = {r[0]: r for r in csv.reader(io.StringIO(ropa.to_csv(rec)))}
    column = rows["System"].index("Time limits for erasure")
    assert rows["matomo"][column].startswith("visits: erased 5 years after the visit's last action")
    assert rows["matomo"][column] == by_name["matomo"]["retention_rules"][0]  # the rule replaces the free text
    # the held entities follow the rules
    assert rows["billing"][column].startswith("invoices: erased 5 years after invoice_date")
    assert "invoice_lines" in rows["billing"][column]
    nb = {a["system"]: a for a in record("nb")["activities"]}
    assert nb["matomo"]["retention_rules"][0].startswith("visits: slettes 5 år etter besøkets siste handling")
    # a system without a declared rule keeps its free text
    path = tmp_path / "datamap.yaml"
    raw = yaml.safe_load(PROJECT_MAP.read_text(encoding="utf-8"))
    del raw["systems"]["matomo"]["retention_rules"]
    path.write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")
    own_record = record(path=path)
    own = {a["system"]: a for a in own_record["activities"]}
    assert own["matomo"]["retention_rules"] == []
    rows = {r[0]: r for r in csv.reader(io.StringIO(ropa.to_csv(own_record)))}
    assert rows["matomo"][column] == own["matomo"]["retention"]
