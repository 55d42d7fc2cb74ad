"""A Norwegian erasure bundle page with every kind of text written below the i18n layer: receipt details and
manual steps (SQL and vendors), held rows, records left alone, a refusal, plan reasons and identifier provenance.
None of it may stay English (issue 16, point 1)."""

from __future__ import annotations

import html
import re
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from connectors.base import Note, note
from connectors.sql import _method_name
from connectors.sql_map import Fixed
from discovery.bundle.archive import local_path
from discovery.bundle.page import _Page
from discovery.engine import pipeline
from discovery.engine.ledger import Request
from discovery.i18n.languages import language
from sandbox.launch import Sandbox
from sandbox.people import JANE
from tests.helpers import sandbox_world
from tests.unit.test_i18n import strict  # noqa: F401 - the fixture: every text looked up is in the catalogue

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("strict")]

# English texts the connectors, the planner and discovery write; none may reach a Norwegian page
ENGLISH = ["masked", "kept and restricted under hold", "matched directly", ", column ", "matched by e-mail",
           "Mautic keeps rows", "Forget the contact in FreshChat", "left alone", "would change records",
           "SALESmanago purges", "Art. 17: mask", "delete rows", "records less than", "user property",
           "profile blanked", "another user's message", "deleted with the contact", "not ours to lift",
           "for the configured owner", "web monitoring", "no manual step is needed", "owned through"]


@pytest.fixture
def world(tmp_path: Path) -> Iterator[dict[str, Any]]:
    def share(sandbox: Sandbox) -> None:  # a FreshChat conversation Jane shares with John
        sandbox.sims["freshchat"].seed_shared()  # type: ignore[attr-defined]

    with sandbox_world(tmp_path, seed=share) as world:
        yield world


def erase(world: dict[str, Any], request_type: str = "erasure", **options: Any) -> str:
    """An erasure (or another change) in Norwegian, its manual steps confirmed; the text of its bundle page."""
    rt, wake = world["rt"], world["wake"]
    request_id = pipeline.submit(rt, wake, request_type, JANE.email, actor="test", language="nb",
                                 **options).request.id
    wake.drain()
    with rt.sessions() as s:
        req = s.get(Request, request_id)
        assert req is not None
        waiting = {t.system for t in req.tasks if t.status == "awaiting_manual"}
    for system in sorted(waiting):
        pipeline.confirm_manual(rt, wake, request_id, system, "gjort", actor="dpo")
    wake.drain()
    with rt.sessions() as s:
        req = s.get(Request, request_id)
        assert req is not None and req.bundle_path, req.status
        with zipfile.ZipFile(local_path(req.bundle_path)) as zf:
            page = zf.read("index.html").decode()
    return html.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", page)))


def test_a_norwegian_erasure_page_has_no_english_receipt_plan_or_provenance_text(world: dict[str, Any]) -> None:
    # First every system but FreshChat, which the plan refuses (it would change John's messages) ...
    page = erase(world)
    # receipts: SQL (held rows, masked and deleted rows) and vendors (details, a manual step)
    assert "orders: 2 beholdt og begrenset på grunn av lovpålagt oppbevaring (bokføringsloven § 13" in page
    assert "users: 1 maskert" in page and "login_log: 6 slettet" in page
    assert "Manuelt steg (bekreftet utført, se nedenfor): Mautic beholder rader om den eller de slettede kontaktene " \
           "1, 2" in page
    assert "SALESmanago fjerner slettede kontakter for godt i nattjobben sin" in page
    assert "så ingen manuelle trinn trengs" in page  # Matomo's archived reports
    # the plan's reasons, with their values, and the refusal
    assert "sletting: art. 17: maskere email (hashet)" in page
    assert "poster som er mindre enn 5 år gamle etter ordered_at, beholdes på grunn av bokføringsloven § 13" in page
    assert "behandlingen begrenses (sette processing_restricted til True)" in page
    assert "ville endret poster med 1 identifikator(er) som ikke tilhører denne personen" in page
    # how we found her
    assert "accounts: users (funnet direkte), kolonnen phone" in page
    assert "(funnet via e-postadresse under eier 1 i datakartets eierliste), feltet contactId" in page
    assert re.search(r"matomo: besøk \d+/\d+ \(userId-en er din\), feltet visitorId", page)

    # ... then FreshChat, confirmed: the profile blanked, a manual step, and records left alone.
    freshchat = erase(world, systems=["freshchat"], confirm_others="checked: John's messages stay")
    assert "profilen er tømt (navn, e-post, telefon, referanse-id," in freshchat
    assert "Glem kontakten i FreshChat (Contacts > Forget): bruker-id " in freshchat
    assert "men samtale(r) " in freshchat and "inneholder også en annen brukers meldinger" in freshchat
    assert "hoppet over: 2 post(er) ikke endret: en annen brukers melding i en samtale som deles med den " \
           "registrerte" in freshchat
    assert "(funnet via e-postadresse), feltet id" in freshchat

    for text in (page, freshchat):
        assert [english for english in ENGLISH if english in text] == []



def test_a_norwegian_restriction_page_says_in_norwegian_why_matomo_cannot_restrict(world: dict[str, Any]) -> None:
    page = erase(world, "restriction", systems=["accounts", "matomo"])
    assert "Merk (ikke mulig i dette systemet): Matomo har ingen måte å begrense behandlingen for én person på " \
           "serveren: reservasjonen (opt-out) finnes bare i nettleseren" in page
    assert "begrensning: art. 18: sette processing_restricted til True" in page
    assert "per-person server-side" not in page and " set to " not in page
    assert [english for english in ENGLISH if english in page] == []


def test_masking_methods_and_failures_read_in_norwegian() -> None:
    nb, en = _Page(language("nb")), _Page(language("en"))
    mask = note("mask {columns}", columns=[note("{column} ({method})", column=c, method=_method_name(m)) for c, m in
                                           [("email", "hash"), ("full_name", "redact"), ("phone", "null"),
                                            ("password_hash", Fixed(fixed="!erased"))]])
    assert nb.note(mask.to_dict()) == "maskere email (hashet), full_name (sladdet), phone (tømt), password_hash " \
                                      "(fast verdi)"
    assert en.note(mask.to_dict()) == mask.render() == "mask email (hash), full_name (redact), phone (null), " \
                                                       "password_hash (fixed value)"
    assert Note.from_dict(mask.to_dict()) == mask
    refused = note("the database refused the change, nothing was changed: {reason}", reason="23505 unique violation")
    gave_up = note("gave up after {attempts} attempts: {error}", attempts=3,
                   error=note("the system answered with an error: {error}", error="HTTP 503"))
    assert nb.note(refused.to_dict()) == "databasen avviste endringen, ingenting ble endret: 23505 unique violation"
    assert nb.note(gave_up.to_dict()) == "ga opp etter 3 forsøk: systemet svarte med en feil: HTTP 503"
