"""The worked example in docs/datamap.md works as written: its SQL and its data map, taken from the page.

A Norwegian schema nobody here designed (mixed-case and hyphenated names, untrimmed mixed-case e-mails, an
`inet` column, a timestamp restriction marker, a composite key, invoice lines held with their invoice, and a
second database linked only by the customer number). If the page drifts from what dsar does, this fails.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import yaml

from connectors.base import ConnectorContext, Identities, Identity, IdentityType
from connectors.emails import normalise_email
from connectors.sql import SqlConnector
from discovery.engine.discover import discover

pytestmark = pytest.mark.integration

DOC = Path(__file__).resolve().parents[2] / "docs" / "datamap.md"
NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
KARI = "  Kari.Nordmann@Eksempel.NO "  # as the shop stored it


def block(marker: str) -> str:
    """The fenced code block right after `<!-- example:<marker> -->` on the page."""
    text = DOC.read_text(encoding="utf-8")
    found = re.search(rf"<!-- example:{re.escape(marker)} -->\s*```\w*\n(.*?)```", text, re.S)
    assert found, f"docs/datamap.md has no example block '{marker}'"
    return found.group(1)


def create(url: str, marker: str, rows: dict[str, list[dict[str, Any]]]) -> sa.Engine:
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        for statement in filter(str.strip, block(marker).split(";")):
            conn.exec_driver_sql(statement)
        meta = sa.MetaData()
        for table, values in rows.items():
            conn.execute(sa.insert(sa.Table(table, meta, autoload_with=conn)), values)
    return engine


def snapshot(engine: sa.Engine) -> dict[str, dict[tuple[Any, ...], dict[str, Any]]]:
    out: dict[str, dict[tuple[Any, ...], dict[str, Any]]] = {}
    with engine.connect() as conn:
        meta = sa.MetaData()
        meta.reflect(conn)
        for table in meta.sorted_tables:
            key = [c.name for c in table.primary_key.columns]
            out[table.name] = {tuple(r[k] for k in key): dict(r) for r in conn.execute(sa.select(table)).mappings()}
    return out


KUNDEDB = {
    "Kunder": [
        {"kundenr": 1001, "E-post": KARI, "reserve_epost": "kari@privat.example", "navn": "Kari Nordmann",
         "telefon": "+47 912 34 567", "ip_adresse": "192.0.2.10",
         "sist_innlogget": datetime(2026, 10, 1, 8, tzinfo=UTC), "behandling_begrenset": None},
        {"kundenr": 1002, "E-post": "ola@eksempel.no", "reserve_epost": None, "navn": "Ola Nordmann",
         "telefon": "+47 987 65 432", "ip_adresse": "198.51.100.7", "sist_innlogget": None,
         "behandling_begrenset": None},
    ],
    "fakturaer": [
        {"fakturanr": 5001, "kundenr": 1001, "fakturadato": date(2019, 3, 1), "beløp": "1250.00"},
        {"fakturanr": 5002, "kundenr": 1001, "fakturadato": date(2024, 5, 10), "beløp": "99.50"},
        {"fakturanr": 6001, "kundenr": 1002, "fakturadato": date(2019, 1, 1), "beløp": "10.00"},
    ],
    "fakturalinjer": [
        {"fakturanr": 5001, "linjenr": 1, "beskrivelse": "VPS small, mars"},
        {"fakturanr": 5001, "linjenr": 2, "beskrivelse": "Backup"},
        {"fakturanr": 5002, "linjenr": 1, "beskrivelse": "VPS large, mai"},
        {"fakturanr": 6001, "linjenr": 1, "beskrivelse": "VPS small"},
    ],
}
SUPPORT = {
    "henvendelser": [
        {"id": 1, "kundenummer": 1001, "emne": "Faktura", "opprettet": datetime(2025, 1, 2, tzinfo=UTC)},
        {"id": 2, "kundenummer": 1002, "emne": "Nedetid", "opprettet": datetime(2025, 2, 3, tzinfo=UTC)},
        {"id": 3, "kundenummer": 1001, "emne": "Oppsigelse", "opprettet": datetime(2026, 9, 9, tzinfo=UTC)},
    ],
}


@pytest.fixture
def world(pg_database: Callable[[], str]) -> Iterator[dict[str, Any]]:
    urls = {"KUNDEDB_URL": pg_database(), "SUPPORT_URL": pg_database()}
    engines = {"kundedb": create(urls["KUNDEDB_URL"], "schema kundedb", KUNDEDB),
               "support": create(urls["SUPPORT_URL"], "schema support", SUPPORT)}
    ctx = ConnectorContext(env=urls, secret_key=b"k" * 32, now=lambda: NOW)
    systems = yaml.safe_load(block("datamap"))["systems"]
    connectors = {name: SqlConnector.from_settings(name, spec, ctx) for name, spec in systems.items()}
    yield {"connectors": connectors, "engines": engines}
    for c in connectors.values():
        c.close()
    for e in engines.values():
        e.dispose()


def found(world: dict[str, Any]) -> Identities:
    result = discover(world["connectors"], Identities([Identity(IdentityType.EMAIL, normalise_email(KARI))]))
    assert not result.errors
    return result.identities


def test_dsar_check_passes_on_the_example(world: dict[str, Any]) -> None:
    for name, connector in world["connectors"].items():
        health = connector.check()
        assert health.ok, (name, health.problems)


def test_discovery_links_the_support_database_by_the_customer_number(world: dict[str, Any]) -> None:
    ids = found(world)
    assert ids.of(IdentityType.ACCOUNT_ID) == ["1001"]
    assert sorted(ids.of(IdentityType.EMAIL)) == ["kari.nordmann@eksempel.no", "kari@privat.example"]
    assert ids.of(IdentityType.PHONE) == ["+47 912 34 567"]
    hits = world["connectors"]["support"].locate(ids)
    assert hits.counts == {"henvendelse": 2}


def test_access_exports_kari_in_the_documented_shapes(world: dict[str, Any]) -> None:
    ids = found(world)
    records = [*world["connectors"]["kundedb"].export(ids), *world["connectors"]["support"].export(ids)]
    by = {(r.entity, r.record_id): r.fields for r in records}
    assert set(by) == {("kunde", "1001"), ("faktura", "5001"), ("faktura", "5002"), ("fakturalinje", "5001/1"),
                       ("fakturalinje", "5001/2"), ("fakturalinje", "5002/1"), ("henvendelse", "1"),
                       ("henvendelse", "3")}
    kunde = by[("kunde", "1001")]
    assert kunde["ip_adresse"] == "192.0.2.10" and kunde["sist_innlogget"] == "2026-10-01T08:00:00+00:00"
    assert kunde["E-post"] == KARI  # exported as stored
    assert by[("faktura", "5001")]["beløp"] == "1250.00"


def test_erasure_masks_deletes_and_holds_as_the_page_says(world: dict[str, Any]) -> None:
    ids = found(world)
    before = {name: snapshot(e) for name, e in world["engines"].items()}
    receipt = world["connectors"]["kundedb"].erase(ids)
    support = world["connectors"]["support"].erase(ids)
    after = {name: snapshot(e) for name, e in world["engines"].items()}

    kunde = after["kundedb"]["Kunder"][(1001,)]
    assert kunde["E-post"].startswith("erased-") and kunde["navn"] == "[redacted]"
    assert kunde["reserve_epost"] is None and kunde["telefon"] is None and kunde["ip_adresse"] is None
    # the old invoice and its lines are gone; the held one is restricted at the erasure's time, its line kept
    assert set(after["kundedb"]["fakturaer"]) == {(5002,), (6001,)}
    assert after["kundedb"]["fakturaer"][(5002,)]["begrenset_fra"] == NOW
    assert set(after["kundedb"]["fakturalinjer"]) == {(5002, 1), (6001, 1)}
    assert after["kundedb"]["fakturalinjer"][(5002, 1)] == before["kundedb"]["fakturalinjer"][(5002, 1)]
    held = {e["entity"]: e for e in receipt.held}
    assert held["faktura"]["until"] == "2029-05-10T00:00:00+00:00"
    assert held["fakturalinje"]["kept_with"] == "faktura" and held["fakturalinje"]["records"] == 1
    assert set(after["support"]["henvendelser"]) == {(2,)} and support.changed == {"henvendelse": 2}
    # Ola's rows are untouched, to the byte
    assert after["kundedb"]["Kunder"][(1002,)] == before["kundedb"]["Kunder"][(1002,)]
    assert after["kundedb"]["fakturaer"][(6001,)] == before["kundedb"]["fakturaer"][(6001,)]
    assert after["support"]["henvendelser"][(2,)] == before["support"]["henvendelser"][(2,)]


def test_restriction_sets_the_timestamp_once_and_lift_clears_it(world: dict[str, Any]) -> None:
    ids = found(world)
    kundedb = world["connectors"]["kundedb"]
    first = kundedb.restrict(ids)
    assert first.changed == {"kunde": 1, "faktura": 2}
    rows = snapshot(world["engines"]["kundedb"])
    assert rows["Kunder"][(1001,)]["behandling_begrenset"] == NOW
    assert {k for k, r in rows["fakturaer"].items() if r["begrenset_fra"] == NOW} == {(5001,), (5002,)}
    assert rows["Kunder"][(1002,)]["behandling_begrenset"] is None
    assert kundedb.restrict(ids).changed == {}  # a second restriction changes nothing
    assert kundedb.lift_restriction(ids).changed == {"kunde": 1, "faktura": 2}
    rows = snapshot(world["engines"]["kundedb"])
    assert all(r["behandling_begrenset"] is None for r in rows["Kunder"].values())
    assert all(r["begrenset_fra"] is None for r in rows["fakturaer"].values())
