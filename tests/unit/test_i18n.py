"""Languages: complete catalogues, every text a person reads translated, legal references alike in each language,
dates and numbers per locale, the language chosen per request, ticket or setting, and data-map texts per language."""

from __future__ import annotations

import re
import zipfile
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest
from babel.messages.catalog import Catalog
from babel.messages.pofile import read_po

from discovery.bundle.archive import LocalStore, local_path
from discovery.bundle.build import BundleView, SystemPart, build_bundle
from discovery.bundle.staging import Staging
from discovery.engine.bundles import bundle_view
from discovery.engine.datamap import DataMapError, load_data_map, untranslated
from discovery.engine.settings import ConfigError, load_settings
from discovery.i18n import languages
from discovery.i18n.languages import LANGUAGES, Language, UnknownLanguage, catalogue_path, language, language_code
from discovery.i18n.messages import extract
from discovery.intake.notify import inactivity_notice
from discovery.intake.report_back import note_html
from discovery.intake.tickets import FreshdeskFields, TicketWebhook, from_freshdesk, from_webhook
from tests.unit.test_bundle import REQUEST_ID, VIEW, header, messages, step, users

ROOT = Path(__file__).resolve().parents[2]
# what must read the same in every language: GDPR articles, sections of an act, the authority and its address
LEGAL = re.compile(r"(?i)\bart\.\s*\d+(?:\(\d+\))*(?:\([a-z]\))?|§\s*\d+|Datatilsynet|Postboks 458 Sentrum, 0105 Oslo")
PLACEHOLDER = re.compile(r"\{(\w+)\}")


def catalogue(code: str) -> Catalog:
    with catalogue_path(code).open("rb") as f:
        return read_po(f, locale=LANGUAGES[code])


def forms(value: str | tuple[str, ...] | list[str] | None) -> list[str]:
    return [] if value is None else [value] if isinstance(value, str) else list(value)


@pytest.mark.parametrize("code", list(LANGUAGES))
def test_every_message_in_the_source_is_translated(code: str) -> None:
    """Extract the messages from the source (Babel's extractor, as `make messages` does) and hold each
    catalogue to them: nothing missing, empty or fuzzy, nothing left over, the same {placeholders}."""
    source = extract()
    cat = catalogue(code)
    assert not cat.fuzzy, f"{catalogue_path(code)}: the header is marked fuzzy"
    problems = []
    for message in source:
        if not message.id:
            continue
        found = cat.get(message.id)
        if found is None:
            problems.append(f"missing: {message.id!r}")
        elif found.fuzzy:
            problems.append(f"fuzzy: {message.id!r}")
        elif not all(forms(found.string)) or len(forms(found.string)) != len(forms(message.id)):
            problems.append(f"empty: {message.id!r}")
        else:
            for msgid, msgstr in zip(forms(message.id), forms(found.string), strict=True):
                if set(PLACEHOLDER.findall(msgid)) != set(PLACEHOLDER.findall(msgstr)):
                    problems.append(f"placeholders differ: {msgid!r} -> {msgstr!r}")
                if sorted(r.lower() for r in LEGAL.findall(msgid)) != sorted(r.lower() for r in LEGAL.findall(msgstr)):
                    problems.append(f"legal references differ: {msgid!r} -> {msgstr!r}")
    leftover = [m.id for m in cat if m.id and m.id not in source]
    assert problems == [] and leftover == [], (problems, leftover, "run `make messages` and translate")


def test_the_catalogue_checker_can_fail(monkeypatch: pytest.MonkeyPatch) -> None:
    """A text added to the source without a translation is found."""
    source = extract()
    source.add("A brand new text nobody translated")
    monkeypatch.setattr(f"{__name__}.extract", lambda: source)
    with pytest.raises(AssertionError, match="missing: 'A brand new text nobody translated'"):
        test_every_message_in_the_source_is_translated("nb")


@pytest.fixture
def strict(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Every text looked up while rendering must be in the language's catalogue (a text outside the extractor's
    reach, say inside an f-string, would otherwise stay English without any test noticing)."""
    missing: list[str] = []
    known = {code: {m.id: m for m in catalogue(code) if m.id} for code in LANGUAGES}
    plain, plural = Language.gettext, Language.ngettext

    def gettext(self: Language, message: str) -> str:
        if message not in known[self.code]:
            missing.append(f"{self.code}: {message!r}")
        return plain(self, message)

    def ngettext(self: Language, singular: str, plural_: str, n: int) -> str:
        if (singular, plural_) not in known[self.code]:
            missing.append(f"{self.code}: {singular!r}")
        return plural(self, singular, plural_, n)

    monkeypatch.setattr(Language, "gettext", gettext)
    monkeypatch.setattr(Language, "ngettext", ngettext)
    yield missing
    assert missing == []


def render(tmp_path: Path, request_type: str, code: str) -> tuple[dict[str, Any], str]:
    staging = Staging(tmp_path / "staging")
    changes = request_type not in ("access", "portability")
    receipt = {"system": "accounts", "action": "erase", "changed": {"users": 1, "orders": 1234},
               "details": [], "vendor_refs": ["job-42"], "manual_steps": ["forget the contact in the UI"],
               "held": [{"entity": "orders", "records": 2, "until": "2031-11-30T00:00:00+00:00",
                         "reason": "the Bookkeeping Act (bokføringsloven § 13)",
                         "reasons": {"en": "the Bookkeeping Act (bokføringsloven § 13)", "nb": "bokføringsloven § 13"}},
                        {"entity": "servers", "records": 1, "until": None, "reason": "x"}]}
    plan = [step("accounts", "users", "erase" if changes else "export"), step("chat", "messages"),
            step("crm", "*", "skip", "the person was not found in this system")]
    parts = [SystemPart("crm", "skipped", reason="the person was not found in this system"),
             SystemPart("mail", "awaiting_manual", "erase", reason="outside this request's scope")]
    if changes:
        parts.append(SystemPart("accounts", "done", "erase", receipt=receipt, finished_at="2026-11-30T10:00:00+00:00",
                                confirmations=[{"at": "2026-11-30T11:00:00+00:00", "note": "done by hand"}]))
    else:
        parts += [SystemPart("accounts", "done", "export", staged=staging.write(REQUEST_ID, "accounts", users())),
                  SystemPart("chat", "done", "export", staged=staging.write(REQUEST_ID, "chat", messages()))]
    view = BundleView(controller={**VIEW.controller, "supervisory_authority_address": "Postboks 458 Sentrum, 0105 Oslo",
                                  "privacy_policy_url": "https://example.no/personvern"},
                      systems=VIEW.systems, language=code,
                      portable={"accounts": {"users": (frozenset({"id"}), ["email"])}})
    with LocalStore(tmp_path / "archive").writer(f"{request_type}-{code}.zip") as out:
        build_bundle(out, header(request_type, plan), parts, staging, view)
    with zipfile.ZipFile(local_path(out.uri)) as zf:
        return orjson.loads(zf.read("manifest.json")), zf.read("index.html").decode()


@pytest.mark.parametrize("code", list(LANGUAGES))
@pytest.mark.parametrize("request_type", ["access", "portability", "erasure", "restriction", "lift_restriction"])
def test_every_page_renders_in_every_language(tmp_path: Path, strict: list[str], request_type: str, code: str) -> None:
    manifest, page = render(tmp_path, request_type, code)
    assert manifest["language"] == code and f'<html lang="{code}">' in page
    for reference in ("Datatilsynet", "Postboks 458 Sentrum, 0105 Oslo", "https://www.datatilsynet.no/",
                      "Art. 77" if code == "en" else "art. 77"):
        assert reference in page, reference


def test_a_norwegian_page_reads_norwegian(tmp_path: Path, strict: list[str]) -> None:
    _, page = render(tmp_path, "erasure", "nb")
    text = page.replace("\xa0", " ")
    for expected in ("Personopplysningene dine hos Example Green Cloud AS", "Rettighetene dine", "Slik fant vi deg",
                     "2. mai 2024 kl. 12:00 UTC", "30. november 2031", "bokføringsloven § 13", "1 234",
                     "Beholdt inntil videre: 2 orders-oppføringer til 30. november 2031",
                     "oppbevaringsplikten opphører", "personen ble ikke funnet i dette systemet",
                     "utenfor denne henvendelsens omfang", "GDPR art. 17", "Trekke tilbake samtykke (art. 7(3))"):
        assert expected in text, expected
    for english in ("Your personal data", "Your rights", "Kept for now", "the hold ends", "Bookkeeping Act"):
        assert english not in text, english


def test_dates_numbers_and_money_per_locale() -> None:
    nb, en = language("nb"), language("en")
    day = datetime(2026, 11, 30, 14, 5, tzinfo=UTC)
    assert nb.date(day) == "30. november 2026" and en.date(day) == "30 November 2026"
    assert nb.datetime(day) == "30. november 2026 kl. 14:05 UTC" and en.datetime(day) == "30 November 2026 at 14:05 UTC"
    assert nb.money(1234.5).replace("\xa0", " ") == "1 234,50 kr" and en.money(1234.5) == "NOK1,234.50"
    assert nb.number(1234).replace("\xa0", " ") == "1 234" and en.number(1234) == "1,234"
    assert nb.date("not a date") == "not a date" and nb.date(None) == ""


@pytest.mark.parametrize("code", ["en", "nb"])
def test_counts_written_from_the_cache_are_babels(code: str) -> None:
    """Integers (a bundle page's counts) are formatted once per value: the same text Babel writes, every time;
    floats and Decimals are not counts and go to Babel as given."""
    from babel.numbers import format_decimal

    lang = language(code)
    for value in (0, 1, 7, 999, 1000, 1234, -1234, 10**6, 10**12, 2**63):
        assert lang.number(value) == lang.number(value) == format_decimal(value, locale=lang.locale), value
    assert lang.number(1.5) == format_decimal(1.5, locale=lang.locale)
    assert lang.number(Decimal("1234.50")) == format_decimal(Decimal("1234.50"), locale=lang.locale)
    assert lang.number(None) == ""


def test_language_codes_people_and_helpdesks_write() -> None:
    for written in ("nb", "NB", "nb-NO", "nb_NO", "no", "Norsk", "bokmål"):
        assert language_code(written) == "nb", written
    assert language_code("en-GB") == "en" and language_code("English") == "en"
    with pytest.raises(UnknownLanguage, match="unknown language 'de'"):
        language_code("de")


def test_the_default_language_is_a_setting(tmp_path: Path) -> None:
    config = tmp_path / "dsar.toml"
    config.write_text('[ledger]\nurl = "sqlite:///x.db"\n[broker]\nurl = "stub://"\n[archive]\npath = "a"\n'
                      'staging_path = "s"\n[data_map]\npath = "datamap.yaml"\n')
    env = {"DSAR_SECRET_KEY": "x" * 16}
    assert load_settings(config, env).requests.language == "en"
    assert load_settings(config, {**env, "DSAR_REQUESTS_LANGUAGE": "no"}).requests.language == "nb"
    with pytest.raises(ConfigError, match=r"requests\.language"):
        load_settings(config, {**env, "DSAR_REQUESTS_LANGUAGE": "de"})
    assert load_settings(ROOT / "config" / "dsar.toml", env).requests.language == "nb"  # the sample config


@pytest.mark.parametrize("code", list(LANGUAGES))
def test_the_inactivity_notice_in_each_language(strict: list[str], code: str) -> None:
    notice = inactivity_notice(language(code), "jane@example.com", "Example Green Cloud AS", "privacy@example.no",
                               datetime(2024, 11, 30, tzinfo=UTC), datetime(2026, 12, 30, tzinfo=UTC), 24)
    assert notice.kind == "inactivity_notice" and notice.to == "jane@example.com"
    assert "privacy@example.no" in notice.body and "bokføringsloven § 13" in notice.body
    if code == "nb":
        assert notice.subject == "Example Green Cloud AS-kontoen din blir slettet 30. desember 2026"
        assert "har ikke vært brukt siden 30. november 2024" in notice.body and "24 måneder" in notice.body
    else:
        assert notice.subject == "Your Example Green Cloud AS account will be deleted on 30 December 2026"
        assert "has not been used since 30 November 2024" in notice.body and "24 months" in notice.body


@pytest.mark.parametrize("code", list(LANGUAGES))
def test_the_ticket_note_in_each_language(strict: list[str], code: str) -> None:
    outcome = {"request": {"id": "r-1", "type": "erasure", "status": "completed_with_errors", "language": code,
                           "error": "mautic erase: HTTP 503"},
               "tasks": [{"system": "accounts", "action": "erase", "status": "done", "error": None},
                         {"system": "mautic", "action": "erase", "status": "failed", "error": "HTTP <503>"}],
               "download": {"url": "https://dsar.example.no/v1/requests/r-1/bundle?token=a&b",
                            "expires_at": "2026-12-07T09:30:00+00:00"}}
    note = note_html(outcome)
    assert "HTTP &lt;503&gt;" in note and 'href="https://dsar.example.no/v1/requests/r-1/bundle?token=a&amp;b"' in note
    if code == "nb":
        assert "krav om sletting <code>r-1</code> er ferdig: <b>fullført med feil</b>" in note
        assert "gyldig til 7. desember 2026 kl. 09:30 UTC" in note and "mislyktes" in note
    else:
        assert "erasure request <code>r-1</code> finished: <b>completed with errors</b>" in note
        assert "valid until 7 December 2026 at 09:30 UTC" in note


def test_tickets_carry_the_language_and_an_unknown_one_falls_back() -> None:
    body = {"ticket_id": "1", "requester_email": "jane@example.com", "type": "access"}
    assert from_webhook(TicketWebhook.model_validate({**body, "language": "nb-NO"})).language == "nb"
    assert from_webhook(TicketWebhook.model_validate({**body, "language": "de"})).language is None
    assert from_webhook(TicketWebhook.model_validate(body)).language is None
    fresh = {"freshdesk_webhook": {"ticket_id": "4711", "ticket_requester_email": "jane@example.com",
                                   "ticket_cf_dsar_request_type": "Access", "ticket_cf_dsar_language": "Norsk"}}
    assert from_freshdesk(fresh, FreshdeskFields()).language == "nb"
    fresh["freshdesk_webhook"]["ticket_cf_dsar_language"] = "{{ticket.cf_dsar_language}}"  # field not set up
    assert from_freshdesk(fresh, FreshdeskFields()).language is None


def test_data_map_texts_per_language(tmp_path: Path) -> None:
    dm = load_data_map(ROOT / "config" / "datamap.yaml")
    assert untranslated(dm, "nb") == [] and untranslated(dm, "en") == []
    nb, en = bundle_view(dm, {}, "access", "nb"), bundle_view(dm, {}, "access", "en")
    assert nb.language == "nb" and nb.systems["accounts"]["title"] == "Kundekontoer og servere"
    assert en.systems["accounts"]["title"] == "Customer accounts and servers"
    assert nb.controller["supervisory_authority"] == "Datatilsynet"
    assert nb.controller["supervisory_authority_address"] == en.controller["supervisory_authority_address"] \
        == "Postboks 458 Sentrum, 0105 Oslo"
    assert "Freshworks" in nb.systems["freshchat"]["processors"][0]

    path = tmp_path / "datamap.yaml"
    path.write_text("controller: {name: X AS, contact: p@x.no}\nsystems:\n  m:\n    kind: matomo\n"
                    "    title: {en: Analytics}\n    purpose: Plain text, every language\n")
    partial = load_data_map(path)
    assert untranslated(partial, "nb") == ["systems.m.title"] and untranslated(partial, "en") == []
    assert bundle_view(partial, {}, "access", "nb").systems["m"]["title"] == "Analytics"  # the English, not nothing
    path.write_text("controller: {name: X AS, contact: p@x.no}\nsystems:\n  m:\n    kind: matomo\n"
                    "    title: {en: Analytics, de: Analyse}\n")
    with pytest.raises(DataMapError, match=r"systems\.m\.title: .*unknown language\(s\) de"):
        load_data_map(path)


def test_catalogues_compile_in_memory_without_a_build_step() -> None:
    languages._translations.cache_clear()
    assert language("nb").gettext("Your rights") == "Rettighetene dine"
    assert not list(catalogue_path("nb").parent.glob("*.mo"))  # nothing compiled is kept in the tree


def test_notes_keep_the_english_text_and_render_in_the_language() -> None:
    """Texts written below the i18n layer (connectors, planner) are Notes: English where they are kept, the
    person's language on the page; a page for an older bundle (plain text only) shows the plain text."""
    from connectors.base import Note, Receipt, is_note, note
    from discovery.bundle.page import _Page

    receipt = Receipt("accounts", "erase")
    receipt.note("{entity}: {count} kept and restricted under hold ({reason})", entity="orders", count=1234,
                 reason={"en": "the Bookkeeping Act", "nb": "bokføringsloven § 13"})
    assert receipt.details == ["orders: 1234 kept and restricted under hold (the Bookkeeping Act)"]
    stored = receipt.to_dict()["notes"][0]
    assert is_note(stored) and Note.from_dict(stored).render() == receipt.details[0]
    nested = note("{count} record(s) left alone: {reason}", count=2,
                  reason=Note("an identity column names someone else"))
    assert Note.from_dict(nested.to_dict()) == nested
    nb = _Page(language("nb"))
    assert nb.note(stored) == f"orders: {language('nb').number(1234)} beholdt og begrenset på grunn av lovpålagt " \
                              "oppbevaring (bokføringsloven § 13)"
    assert nb.note(nested.to_dict()) == "2 post(er) ikke endret: en identitetskolonne navngir en annen person"
    assert nb.notes([], ["users: 1 masked"]) == ["users: 1 masked"]  # an older bundle: its English lines
    assert nb.note(None, "the person was not found in this system") == "personen ble ikke funnet i dette systemet"
