"""Issue 10: the SQL connector's access, erasure, restriction, lift and holds on PostgreSQL, MariaDB and SQLite.

One schema, written once as SQLAlchemy Core metadata, is created by each engine in its own dialect and filled
with the same rows. Every expectation comes from the fixture rows and the data map below (an independent
reading of the documented representations), never from the connector: the subject's rows change exactly as
the map says, and every other person's rows stay byte for byte the same.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from connectors.base import ConnectorContext, Identities, Identity, IdentityType, Record
from connectors.sql import SqlConnector

pytestmark = pytest.mark.integration

SYSTEM = "shop"
URL_ENV = "DSAR_ENGINES_DB_URL"
SECRET_KEY = b"engines-test-key"
NOW = datetime(2025, 6, 15, 12, 30, 0, tzinfo=UTC)  # the connector's clock
NOW_NAIVE = NOW.replace(tzinfo=None)
REASON = "Bookkeeping Act (bokføringsloven § 13): 5 years"

metadata = sa.MetaData()
customers = sa.Table(
    "customers", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("account_id", sa.Integer),  # the account system's user id
    sa.Column("email", sa.String(200)),
    sa.Column("name", sa.String(100)),
    sa.Column("phone", sa.String(40)),
    sa.Column("status", sa.String(20)),
    sa.Column("born", sa.Date),
    sa.Column("created_at", sa.DateTime),
    sa.Column("balance", sa.Numeric(12, 2)),
    sa.Column("password_hash", sa.String(100)),
    sa.Column("processing_restricted", sa.Boolean, nullable=False),
    sa.Column("restricted_at", sa.DateTime),
)
invoices = sa.Table(
    "invoices", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("customer_id", sa.Integer, sa.ForeignKey("customers.id"), nullable=False),
    sa.Column("number", sa.String(32), nullable=False),
    sa.Column("invoice_date", sa.Date, nullable=False),
    sa.Column("total", sa.Numeric(12, 2), nullable=False),
    sa.Column("processing_restricted", sa.Boolean, nullable=False),
    sa.Column("restricted_at", sa.DateTime),
)
invoice_lines = sa.Table(
    "invoice_lines", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("invoice_id", sa.Integer, sa.ForeignKey("invoices.id"), nullable=False),
    sa.Column("description", sa.String(200), nullable=False),
    sa.Column("amount", sa.Numeric(12, 2), nullable=False),
    sa.Column("processing_restricted", sa.Boolean, nullable=False),
)
notes = sa.Table(
    "notes", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("customer_id", sa.Integer, sa.ForeignKey("customers.id"), nullable=False),
    sa.Column("body", sa.Text, nullable=False),
    sa.Column("written_at", sa.DateTime, nullable=False),
)

FLAG = {"processing_restricted": True}
UNFLAG = {"processing_restricted": False}
ENTITIES: dict[str, dict[str, Any]] = {
    "customers": {
        "table": "customers",
        "identities": {"email": "email", "phone": "phone", "account_id": "account_id"},
        "fields": {"account_id": "account", "email": "contact", "name": "contact", "phone": "contact",
                   "status": "account", "born": "identity", "created_at": "account", "balance": "billing",
                   "processing_restricted": "account", "restricted_at": "account"},
        "withheld": {"password_hash": "a password hash"},
        "erase": {"strategy": "mask", "mask": {"email": "hash", "name": "redact", "phone": "null",
                                               "status": {"fixed": "erased"}, "born": "null"}},
        "restrict": {"set": {**FLAG, "restricted_at": "now"}},
        "lift": {"set": {**UNFLAG, "restricted_at": None}},
    },
    "invoices": {
        "table": "invoices",
        "references": {"customer_id": "customers.id"},
        "fields": {"customer_id": "billing", "number": "billing", "invoice_date": "billing", "total": "billing",
                   "processing_restricted": "billing", "restricted_at": "billing"},
        "erase": {"strategy": "delete"},
        "hold": {"years": 5, "from": "invoice_date", "reason": REASON},
        "restrict": {"set": {**FLAG, "restricted_at": "now"}},
        "lift": {"set": {**UNFLAG, "restricted_at": None}},
    },
    "invoice_lines": {
        "table": "invoice_lines",
        "references": {"invoice_id": "invoices.id"},
        "fields": {"invoice_id": "billing", "description": "billing", "amount": "billing",
                   "processing_restricted": "billing"},
        "erase": {"strategy": "delete"},
        "hold": {"years": 5, "from": "invoices.invoice_date", "reason": REASON},
        "restrict": {"set": FLAG},
        "lift": {"set": UNFLAG},
    },
    "notes": {  # no restriction: a restriction leaves these rows as they are
        "table": "notes",
        "references": {"customer_id": "customers.id"},
        "fields": {"customer_id": "support", "body": "support", "written_at": "support"},
        "erase": {"strategy": "delete"},
    },
}

ANN = "ann.berg@example.com"  # the subject; her row stores the address as she typed it
C = dict[str, Any]


def _customer(id_: int, account: int, email: str, name: str, phone: str | None, born: date | None, balance: str) -> C:
    return {"id": id_, "account_id": account, "email": email, "name": name, "phone": phone, "status": "active",
            "born": born, "created_at": datetime(2019, 4, 1, 8, 15, 30), "balance": Decimal(balance),
            "password_hash": f"$argon2id$x{id_}", "processing_restricted": False, "restricted_at": None}


ROWS: dict[str, list[C]] = {
    "customers": [
        _customer(1, 501, "  Ann.Berg@Example.COM ", "Ann Berg", "+4791000001", date(1980, 2, 29), "12.50"),
        _customer(2, 502, "bob@example.com", "Bob Dahl", "+4791000002", date(1975, 7, 1), "0.00"),
        _customer(3, 5010, "xann.berg@example.com", "Ann Berg", "+4791000003", None, "-3.10"),  # only looks like Ann
        _customer(4, 51, "ann.berg@example.com.evil.test", "Ann B.", None, date(1990, 1, 1), "99999.99"),
    ],
    "invoices": [
        # (id, customer, date): Ann's 10 is past the 5-year hold (NOW - 5 y = 2020-06-15), 11 and 12 are inside
        {"id": i, "customer_id": c, "number": f"INV-{i}", "invoice_date": d, "total": Decimal(t),
         "processing_restricted": False, "restricted_at": None}
        for i, c, d, t in [(10, 1, date(2018, 3, 1), "100.00"), (11, 1, date(2024, 2, 29), "250.40"),
                           (12, 1, date(2020, 6, 15), "19.99"), (13, 2, date(2018, 1, 1), "5.00"),
                           (14, 3, date(2024, 1, 1), "7.00"), (15, 4, date(2017, 1, 1), "8.00")]
    ],
    "invoice_lines": [
        {"id": 10 * i + k, "invoice_id": i, "description": f"line {k} of INV-{i}", "amount": Decimal(f"{k + 1}.25"),
         "processing_restricted": False}
        for i in (10, 11, 12, 13, 14, 15) for k in (0, 1)
    ],
    "notes": [
        {"id": 100, "customer_id": 1, "body": "Ann asked about IPv6 — æøå", "written_at": datetime(2024, 5, 1, 9, 0)},
        {"id": 101, "customer_id": 1, "body": "Ann's second note", "written_at": datetime(2025, 1, 2, 3, 4, 5)},
        {"id": 102, "customer_id": 2, "body": "Bob's note", "written_at": datetime(2024, 5, 2, 9, 0)},
        {"id": 103, "customer_id": 3, "body": "Not Ann's note", "written_at": datetime(2024, 5, 3, 9, 0)},
    ],
}
ANNS = {"customers": {1}, "invoices": {10, 11, 12}, "invoice_lines": {100, 101, 110, 111, 120, 121},
        "notes": {100, 101}}
HELD = {"invoices": {11, 12}, "invoice_lines": {110, 111, 120, 121}}

Snapshot = dict[str, dict[int, C]]


@pytest.fixture(params=["postgresql", "mariadb", "sqlite"])
def shop(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[SqlConnector, sa.Engine]]:
    """The schema and rows on one engine, and a connector for it with a fixed clock."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'shop.db'}"
    else:
        factory: Callable[[], str] = request.getfixturevalue(
            "pg_database" if request.param == "postgresql" else "mariadb_database")
        url = factory()
    engine = sa.create_engine(url)
    metadata.create_all(engine)
    with engine.begin() as conn:
        for table in metadata.sorted_tables:
            conn.execute(table.insert(), ROWS[table.name])
    ctx = ConnectorContext(env={URL_ENV: url}, secret_key=SECRET_KEY, now=lambda: NOW)
    connector = SqlConnector.from_settings(SYSTEM, {"kind": "sql", "url_env": URL_ENV, "entities": ENTITIES}, ctx)
    yield connector, engine
    connector.close()
    engine.dispose()


def snapshot(engine: sa.Engine) -> Snapshot:
    """Every row as the database returns it through the schema's own types."""
    with engine.connect() as conn:
        return {t.name: {r["id"]: dict(r) for r in conn.execute(sa.select(t)).mappings()}
                for t in metadata.sorted_tables}


def as_stored() -> Snapshot:
    return {name: {r["id"]: dict(r) for r in rows} for name, rows in ROWS.items()}


def ann() -> Identities:
    """What discovery knows of Ann: the e-mail she wrote from, and the account id it learns (which still finds
    her rows once the e-mail is masked)."""
    return Identities([Identity(IdentityType.EMAIL, ANN), Identity(IdentityType.ACCOUNT_ID, "501")])


def exported(value: Any, dialect: str) -> Any:
    """The documented export representation of a stored value of this schema's types."""
    if isinstance(value, bool) and dialect == "mysql":
        return int(value)  # MariaDB has no boolean type: BOOLEAN is TINYINT(1), an integer column
    if isinstance(value, datetime):
        return value.isoformat()  # naive: no offset
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return f"{value:.2f}"  # every numeric column here has scale 2: the stored digits, as text
    return value  # int, str, bool, None


def hashed(table: str, key: int, column: str) -> str:
    """The documented 'hash' mask: erased- and 24 hex digits of HMAC(secret, table:key:column)."""
    return "erased-" + hmac.new(SECRET_KEY, f"{table}:{key}:{column}".encode(), hashlib.sha256).hexdigest()[:24]


def assert_only(before: Snapshot, after: Snapshot, touched: dict[str, set[int]]) -> None:
    """Rows outside `touched` are unchanged, and no row appeared."""
    for table, rows in before.items():
        assert set(after[table]) <= set(rows), f"rows appeared in {table}"
        for key, row in rows.items():
            if key not in touched.get(table, set()):
                assert after[table].get(key) == row, f"{table} {key} (not the subject's) changed"


def test_the_schema_is_stored_the_same_on_every_engine(shop: tuple[SqlConnector, sa.Engine]) -> None:
    """The comparisons below rest on this: what each engine returns is what was written."""
    _connector, engine = shop
    assert snapshot(engine) == as_stored()


def test_access_exports_exactly_the_subjects_rows_and_values(shop: tuple[SqlConnector, sa.Engine]) -> None:
    connector, engine = shop
    records: list[Record] = list(connector.export(ann()))
    got: dict[str, dict[str, dict[str, Any]]] = {}
    for record in records:
        assert record.record_id not in got.get(record.entity, {}), f"{record.entity}/{record.record_id} twice"
        got.setdefault(record.entity, {})[record.record_id] = dict(record.fields)
    stored, dialect = as_stored(), engine.dialect.name
    expected = {
        entity: {str(key): {c: exported(stored[spec["table"]][key][c], dialect) for c in ["id", *spec["fields"]]}
                 for key in ANNS[entity]}
        for entity, spec in ENTITIES.items()
    }
    # as JSON text, so true is not 1 and "1" is not 1
    assert json.dumps(got, sort_keys=True, indent=1) == json.dumps(expected, sort_keys=True, indent=1)
    assert all("password_hash" not in fields for fields in got["customers"].values())  # withheld


def test_erasure_masks_and_deletes_as_mapped_and_keeps_held_invoices_restricted(
        shop: tuple[SqlConnector, sa.Engine]) -> None:
    connector, engine = shop
    before = snapshot(engine)
    receipt = connector.erase(ann())
    after = snapshot(engine)
    assert_only(before, after, ANNS)

    # customers: masked column by column, the rest as it was
    assert after["customers"][1] == {**before["customers"][1], "email": hashed("customers", 1, "email"),
                                     "name": "[redacted]", "phone": None, "status": "erased", "born": None}
    # deleted: notes, the invoice past its hold and its lines
    assert set(after["notes"]) == set(before["notes"]) - {100, 101}
    assert set(after["invoices"]) == set(before["invoices"]) - {10}
    assert set(after["invoice_lines"]) == set(before["invoice_lines"]) - {100, 101}
    # held: kept and restricted with the map's `restrict` values ('now' is the connector's clock)
    for key in HELD["invoices"]:
        assert after["invoices"][key] == {**before["invoices"][key], "processing_restricted": True,
                                          "restricted_at": NOW_NAIVE}
    for key in HELD["invoice_lines"]:
        assert after["invoice_lines"][key] == {**before["invoice_lines"][key], "processing_restricted": True}

    assert receipt.changed == {"notes": 2, "invoice_lines": 2, "invoices": 1, "customers": 1}
    assert not receipt.skipped
    # the receipt's `held` entries: how many, why, with what, and the day each hold ends (5 years after
    # the invoice date; 29 February ends on 28 February)
    ends = [{"until": "2025-06-15T00:00:00+00:00", "records": 1}, {"until": "2029-02-28T00:00:00+00:00", "records": 1}]
    held = {entry["entity"]: entry for entry in receipt.held}
    assert held == {
        "invoices": {"entity": "invoices", "records": 2, "until": "2029-02-28T00:00:00+00:00", "reason": REASON,
                     "restricted_with": {**FLAG, "restricted_at": "now"}, "ends": ends},
        "invoice_lines": {"entity": "invoice_lines", "records": 4, "until": "2029-02-28T00:00:00+00:00",
                          "reason": REASON, "restricted_with": FLAG,
                          "ends": [{**e, "records": 2} for e in ends]},
    }

    # the same erasure again changes nothing; the held rows are still found (by the account id) and held
    again = connector.erase(ann())
    assert snapshot(engine) == after
    assert again.changed == {}
    assert {e["entity"]: e["records"] for e in again.held} == {"invoices": 2, "invoice_lines": 4}


def test_restriction_marks_exactly_the_subjects_rows_and_lifting_restores_them(
        shop: tuple[SqlConnector, sa.Engine]) -> None:
    connector, engine = shop
    before = snapshot(engine)
    receipt = connector.restrict(ann())
    after = snapshot(engine)
    marked = {e: ANNS[e] for e in ("customers", "invoices", "invoice_lines")}  # notes have no restriction
    assert_only(before, after, marked)
    assert receipt.changed == {"customers": 1, "invoices": 3, "invoice_lines": 6}
    assert after["customers"][1] == {**before["customers"][1], "processing_restricted": True,
                                     "restricted_at": NOW_NAIVE}
    for key in marked["invoices"]:
        assert after["invoices"][key] == {**before["invoices"][key], "processing_restricted": True,
                                          "restricted_at": NOW_NAIVE}
    for key in marked["invoice_lines"]:
        assert after["invoice_lines"][key] == {**before["invoice_lines"][key], "processing_restricted": True}
    assert after["notes"] == before["notes"]

    assert connector.restrict(ann()).changed == {}  # already restricted: nothing to do
    assert snapshot(engine) == after

    lifted = connector.lift_restriction(ann())
    assert lifted.changed == {"customers": 1, "invoices": 3, "invoice_lines": 6}
    assert snapshot(engine) == before  # the map's lift values are the rows' original ones
    assert connector.lift_restriction(ann()).changed == {}


def test_locate_counts_the_subjects_rows_and_learns_her_identifiers_with_provenance(
        shop: tuple[SqlConnector, sa.Engine]) -> None:
    connector, _engine = shop
    hits = connector.locate(Identities([Identity(IdentityType.EMAIL, ANN)]))
    assert hits.found
    assert hits.counts == {e: len(keys) for e, keys in ANNS.items()}
    assert hits.skipped == {}
    learned = {(str(i.type), i.value): i.via for i in hits.learned}
    assert set(learned) == {("email", ANN), ("phone", "+4791000001"), ("account_id", "501")}
    assert all("customers (matched directly)" in via and "column" in via for via in learned.values())
