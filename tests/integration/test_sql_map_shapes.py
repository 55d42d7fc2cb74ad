"""Issue 10 points 4 and 10: the SQL data map says what real schemas look like, on PostgreSQL and MariaDB.

A small foreign schema in the style of the example database other DSR engines ship for their tests:
customers with two e-mail columns, one address table referenced by customers, orders and cards (owned) and
employees (a relation), order items and tags with composite keys, a product catalogue that is exported and
never changed (`erase: keep`), invoices under a legal hold with lines held with them (`hold: {with:
invoice}`) and notes that declare no hold. Who owns each row is written by hand below, never asked of the
connector.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime
from typing import Any

import pytest
import sqlalchemy as sa

from connectors.base import ConnectorContext, Identities, Identity, IdentityType, PermanentError
from connectors.sql import OWNED_BY_SOMEONE_ELSE, SqlConnector
from connectors.sql_map import parse_system, risks
from connectors.sql_values import REDACTED

pytestmark = pytest.mark.integration

NOW = datetime(2025, 6, 1, tzinfo=UTC)
KEEP_REASON = "the product catalogue is ours, not the customer's personal data"
HOLD_REASON = "the Bookkeeping Act (bokføringsloven § 13): accounting records are kept 5 years"

metadata = sa.MetaData()
address = sa.Table("address", metadata, sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
                   sa.Column("street", sa.String(100)), sa.Column("city", sa.String(100)))
customer = sa.Table("customer", metadata, sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
                    sa.Column("email", sa.String(100)), sa.Column("alt_email", sa.String(100)),
                    sa.Column("name", sa.String(100)), sa.Column("address_id", sa.ForeignKey("address.id")))
employee = sa.Table("employee", metadata, sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
                    sa.Column("email", sa.String(100)), sa.Column("name", sa.String(100)),
                    sa.Column("address_id", sa.ForeignKey("address.id")))
product = sa.Table("product", metadata, sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
                   sa.Column("name", sa.String(100)), sa.Column("price", sa.Integer))
orders = sa.Table("orders", metadata, sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
                  sa.Column("customer_id", sa.ForeignKey("customer.id")),
                  sa.Column("shipping_address_id", sa.ForeignKey("address.id")), sa.Column("note", sa.String(100)))
order_item = sa.Table("order_item", metadata,
                      sa.Column("order_id", sa.ForeignKey("orders.id"), primary_key=True, autoincrement=False),
                      sa.Column("item_no", sa.Integer, primary_key=True, autoincrement=False),
                      sa.Column("product_id", sa.ForeignKey("product.id")), sa.Column("quantity", sa.Integer),
                      sa.Column("note", sa.String(100)))
order_tag = sa.Table("order_tag", metadata,
                     sa.Column("order_id", sa.ForeignKey("orders.id"), primary_key=True, autoincrement=False),
                     sa.Column("tag", sa.String(20), primary_key=True))
payment_card = sa.Table("payment_card", metadata, sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
                        sa.Column("customer_id", sa.ForeignKey("customer.id")), sa.Column("ccn", sa.String(20)),
                        sa.Column("billing_address_id", sa.ForeignKey("address.id")))
invoice = sa.Table("invoice", metadata, sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
                   sa.Column("customer_id", sa.ForeignKey("customer.id")), sa.Column("invoice_date", sa.Date),
                   sa.Column("total", sa.Integer), sa.Column("processing_restricted", sa.Boolean, nullable=False))
invoice_line = sa.Table("invoice_line", metadata, sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
                        sa.Column("invoice_id", sa.ForeignKey("invoice.id")), sa.Column("description", sa.String(100)),
                        sa.Column("amount", sa.Integer))
invoice_note = sa.Table("invoice_note", metadata, sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
                        sa.Column("invoice_id", sa.ForeignKey("invoice.id")), sa.Column("text", sa.String(100)))

# table -> rows, each with the people it belongs to (empty: nobody's, or someone the request never reaches)
ROWS: dict[str, list[tuple[set[str], dict[str, Any]]]] = {
    "address": [
        ({"alice"}, {"id": 1, "street": "1 Alice Road", "city": "Oslo"}),   # her customer row, order 10, card 20
        (set(), {"id": 2, "street": "2 Carol Street", "city": "Bergen"}),
        (set(), {"id": 3, "street": "3 Bob Lane", "city": "Oslo"}),         # Bob's, and Alice's order 11 ships there
        (set(), {"id": 4, "street": "4 Staff Way", "city": "Oslo"}),        # the employee's
    ],
    "customer": [
        ({"alice"}, {"id": 1, "email": "Alice@Example.com", "alt_email": "alice.alt@example.com", "name": "Alice",
                     "address_id": 1}),
        ({"bob"}, {"id": 2, "email": "bob@example.com", "alt_email": None, "name": "Bob", "address_id": 3}),
        ({"carol"}, {"id": 3, "email": "carol@example.com", "alt_email": "carol2@example.com", "name": "Carol",
                     "address_id": 2}),
    ],
    "employee": [(set(), {"id": 1, "email": "erin@example.com", "name": "Erin", "address_id": 4})],
    "product": [
        ({"alice"}, {"id": 100, "name": "lamp", "price": 30}),   # bought by Alice alone
        (set(), {"id": 101, "name": "desk", "price": 200}),      # bought by Alice and Bob
        (set(), {"id": 102, "name": "chair", "price": 50}),      # bought by nobody
    ],
    "orders": [
        ({"alice"}, {"id": 10, "customer_id": 1, "shipping_address_id": 1, "note": "ring twice"}),
        ({"alice"}, {"id": 11, "customer_id": 1, "shipping_address_id": 3, "note": "gift for Bob"}),
        ({"bob"}, {"id": 12, "customer_id": 2, "shipping_address_id": 3, "note": "leave at door"}),
    ],
    "order_item": [
        ({"alice"}, {"order_id": 10, "item_no": 1, "product_id": 100, "quantity": 1, "note": "blue"}),
        ({"alice"}, {"order_id": 10, "item_no": 2, "product_id": 101, "quantity": 2, "note": "oak"}),
        ({"alice"}, {"order_id": 11, "item_no": 1, "product_id": 101, "quantity": 1, "note": "wrap it"}),
        ({"bob"}, {"order_id": 12, "item_no": 1, "product_id": 101, "quantity": 1, "note": "pine"}),
    ],
    "order_tag": [
        ({"alice"}, {"order_id": 10, "tag": "gift"}),
        ({"alice"}, {"order_id": 10, "tag": "fast/express"}),
        ({"alice"}, {"order_id": 11, "tag": "gift"}),
        ({"bob"}, {"order_id": 12, "tag": "gift"}),
    ],
    "payment_card": [
        ({"alice"}, {"id": 20, "customer_id": 1, "ccn": "4111", "billing_address_id": 1}),
        ({"bob"}, {"id": 21, "customer_id": 2, "ccn": "5500", "billing_address_id": 3}),
    ],
    "invoice": [
        ({"alice"}, {"id": 30, "customer_id": 1, "invoice_date": date(2024, 1, 15), "total": 90,
                     "processing_restricted": False}),
        ({"alice"}, {"id": 31, "customer_id": 1, "invoice_date": date(2015, 3, 1), "total": 10,
                     "processing_restricted": False}),
        ({"bob"}, {"id": 32, "customer_id": 2, "invoice_date": date(2015, 3, 1), "total": 20,
                   "processing_restricted": False}),
    ],
    "invoice_line": [
        ({"alice"}, {"id": 300, "invoice_id": 30, "description": "lamp", "amount": 30}),
        ({"alice"}, {"id": 301, "invoice_id": 30, "description": "desk", "amount": 60}),
        ({"alice"}, {"id": 310, "invoice_id": 31, "description": "old", "amount": 10}),
        ({"bob"}, {"id": 320, "invoice_id": 32, "description": "bob's", "amount": 20}),
    ],
    "invoice_note": [
        ({"alice"}, {"id": 3000, "invoice_id": 30, "text": "paid by card"}),
        ({"alice"}, {"id": 3100, "invoice_id": 31, "text": "paid in cash"}),
    ],
}

ENTITIES: dict[str, Any] = {
    "customer": {
        "table": "customer",
        # the id stays when the row is masked: held invoices are found by it when their hold ends
        "identities": {"email": ["email", "alt_email"], "account_id": "id"},
        "fields": {"id": "account", "email": "contact", "alt_email": "contact", "name": "identity",
                   "address_id": "contact"},
        "erase": {"strategy": "mask", "mask": {"email": "hash", "alt_email": "null", "name": "redact"}},
    },
    "address": {
        "table": "address",
        # the foreign keys are on the other tables: an address is reached through the rows pointing at it
        "references": {"id": ["customer.address_id", "orders.shipping_address_id", "payment_card.billing_address_id",
                              {"to": "employee.address_id", "owner": False}]},
        "fields": {"id": "contact", "street": "contact", "city": "contact"},
        "erase": {"strategy": "mask", "mask": {"street": "redact", "city": "null"}},
    },
    "employee": {
        "table": "employee",
        "identities": {"email": "email"},
        "fields": {"id": "staff", "name": "staff"},
        "erase": {"strategy": "mask", "mask": {"email": "hash", "name": "redact"}},
    },
    "orders": {
        "table": "orders",
        "references": {"customer_id": "customer.id"},
        "fields": {"id": "order", "shipping_address_id": "order", "note": "order"},
        "erase": {"strategy": "mask", "mask": {"note": "redact"}},
    },
    "order_item": {
        "table": "order_item",
        "primary_key": ["order_id", "item_no"],
        "references": {"order_id": "orders.id"},
        "fields": {"product_id": "order", "quantity": "order", "note": "order"},
        "erase": {"strategy": "mask", "mask": {"note": "redact"}},
    },
    "order_tag": {
        "table": "order_tag",
        "primary_key": ["order_id", "tag"],
        "references": {"order_id": "orders.id"},
        "fields": {},
        "erase": {"strategy": "delete"},
    },
    "product": {
        "table": "product",
        "references": {"id": "order_item.product_id"},
        "fields": {"id": "order", "name": "order", "price": "order"},
        "erase": {"strategy": "keep", "reason": KEEP_REASON},
    },
    "payment_card": {
        "table": "payment_card",
        "references": {"customer_id": "customer.id"},
        "fields": {"id": "billing", "ccn": "billing", "billing_address_id": "billing"},
        "erase": {"strategy": "delete"},
    },
    "invoice": {
        "table": "invoice",
        "references": {"customer_id": "customer.id"},
        "fields": {"id": "billing", "invoice_date": "billing", "total": "billing"},
        "erase": {"strategy": "delete"},
        "restrict": {"set": {"processing_restricted": True}},
        "lift": {"set": {"processing_restricted": False}},
        "hold": {"years": 5, "from": "invoice_date", "reason": HOLD_REASON},
    },
    "invoice_line": {
        "table": "invoice_line",
        "references": {"invoice_id": "invoice.id"},
        "fields": {"id": "billing", "description": "billing", "amount": "billing"},
        "erase": {"strategy": "delete"},
        "hold": {"with": "invoice"},
    },
    "invoice_note": {  # declares no hold: kept while its invoice is held all the same
        "table": "invoice_note",
        "references": {"invoice_id": "invoice.id"},
        "fields": {"id": "billing", "text": "billing"},
        "erase": {"strategy": "delete"},
    },
}


def settings(entities: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"kind": "sql", "url_env": "SHAPES_DB_URL", "entities": copy.deepcopy(entities or ENTITIES)}


@pytest.fixture(params=["postgresql", "mariadb"])
def database(request: pytest.FixtureRequest) -> Callable[[], str]:
    return request.getfixturevalue("pg_database" if request.param == "postgresql" else "mariadb_database")  # type: ignore[no-any-return]


@contextmanager
def built(database: Callable[[], str], entities: dict[str, Any] | None = None
          ) -> Iterator[tuple[SqlConnector, sa.Engine]]:
    url = database()
    engine = sa.create_engine(url)
    metadata.create_all(engine)
    with engine.begin() as conn:
        for table in metadata.sorted_tables:
            rows = [row for _, row in ROWS[table.name]]
            if rows:
                conn.execute(table.insert(), rows)
    ctx = ConnectorContext(env={"SHAPES_DB_URL": url}, secret_key=b"k" * 32, now=lambda: NOW)
    connector = SqlConnector.from_settings("shop", settings(entities), ctx)
    try:
        yield connector, engine
    finally:
        connector.close()
        engine.dispose()


def key_of(table: sa.Table, row: Any) -> tuple[Any, ...]:
    return tuple(row[c.name] for c in table.primary_key.columns)


def snapshot(engine: sa.Engine) -> dict[str, dict[tuple[Any, ...], dict[str, Any]]]:
    with engine.connect() as conn:
        return {t.name: {key_of(t, r): dict(r) for r in conn.execute(sa.select(t)).mappings()}
                for t in metadata.sorted_tables}


def owned_by(person: str, table: str) -> set[tuple[Any, ...]]:
    t = metadata.tables[table]
    return {key_of(t, row) for who, row in ROWS[table] if person in who}


ALICE = Identities([Identity(IdentityType.EMAIL, "alice@example.com")])


def test_access_exports_each_of_the_subjects_rows_once(database: Callable[[], str]) -> None:
    with built(database) as (connector, _engine):
        records = list(connector.export(ALICE))
        hits = connector.locate(ALICE)
    seen: dict[str, list[str]] = {}
    for record in records:
        seen.setdefault(record.entity, []).append(record.record_id)
    assert {e: sorted(ids) for e, ids in seen.items()} == {
        "customer": ["1"],
        "address": ["1"],  # reached through her customer row, order 10 and card 20: once
        "orders": ["10", "11"],
        "order_item": ["10/1", "10/2", "11/1"],
        "order_tag": ["10/fast%2Fexpress", "10/gift", "11/gift"],  # composite ids, each part percent-encoded
        "product": ["100"],  # the desk is Bob's purchase too
        "payment_card": ["20"],
        "invoice": ["30", "31"],
        "invoice_line": ["300", "301", "310"],
        "invoice_note": ["3000", "3100"],
    }
    item = next(r for r in records if r.entity == "order_item" and r.record_id == "10/2")
    assert item.fields == {"order_id": 10, "item_no": 2, "product_id": 101, "quantity": 2, "note": "oak"}
    # both e-mail columns are identity columns: the second is learned, and the shared rows are counted
    assert {(str(i.type), i.value) for i in hits.learned} >= {("email", "alice.alt@example.com")}
    assert hits.skipped["address"] == {OWNED_BY_SOMEONE_ELSE: 1}
    assert hits.skipped["product"] == {OWNED_BY_SOMEONE_ELSE: 1}


def test_the_second_email_column_finds_the_person(database: Callable[[], str]) -> None:
    with built(database) as (connector, _engine):
        records = list(connector.export(Identities([Identity(IdentityType.EMAIL, "carol2@example.com")]),
                                        ["customer"]))
    assert [r.record_id for r in records] == ["3"]


def test_erasure_changes_exactly_the_subjects_rows(database: Callable[[], str]) -> None:
    with built(database) as (connector, engine):
        before = snapshot(engine)
        receipt = connector.erase(ALICE)
        after = snapshot(engine)
        again = connector.erase(ALICE)  # a re-run finds nothing left to change
        assert snapshot(engine) == after
    changed = {
        "customer": {(1,)}, "address": {(1,)}, "orders": {(10,), (11,)},
        "order_item": {(10, 1), (10, 2), (11, 1)}, "order_tag": owned_by("alice", "order_tag"),
        "payment_card": {(20,)}, "invoice": {(30,), (31,)}, "invoice_line": {(310,)}, "invoice_note": {(3100,)},
    }
    for table, rows in before.items():
        for key, row in rows.items():
            if key not in changed.get(table, set()):
                assert after[table].get(key) == row, f"{table} {key} changed"
    deleted = {"order_tag": owned_by("alice", "order_tag"), "payment_card": {(20,)}, "invoice": {(31,)},
               "invoice_line": {(310,)}, "invoice_note": {(3100,)}}
    for table, keys in deleted.items():
        assert not keys & set(after[table]), f"{table}: {keys & set(after[table])} not deleted"
    assert (12, "gift") in after["order_tag"]  # Bob's row with the same tag: a composite key is deleted whole
    assert after["customer"][(1,)]["email"] != before["customer"][(1,)]["email"]
    assert after["customer"][(1,)]["alt_email"] is None and after["customer"][(1,)]["name"] == REDACTED
    assert after["address"][(1,)]["street"] == REDACTED and after["address"][(1,)]["city"] is None
    assert after["address"][(3,)] == before["address"][(3,)]  # Bob's address, where her order 11 shipped
    assert {k: after["order_item"][k]["note"] for k in changed["order_item"]} == dict.fromkeys(
        changed["order_item"], REDACTED)
    assert after["product"] == before["product"]
    # the held invoice is restricted; its lines and its note are kept as they were, not written
    assert after["invoice"][(30,)]["processing_restricted"] in (True, 1)
    assert {k for k in after["invoice_line"]} == {(300,), (301,), (320,)}
    assert after["invoice_note"] == {(3000,): before["invoice_note"][(3000,)]}

    assert receipt.changed == {"order_tag": 3, "payment_card": 1, "invoice_line": 1, "invoice_note": 1,
                               "invoice": 1, "order_item": 3, "orders": 2, "address": 1, "customer": 1}
    assert f"product: 1 kept, never erased ({KEEP_REASON})" in receipt.details
    held = {h["entity"]: h for h in receipt.held}
    assert set(held) == {"invoice", "invoice_line", "invoice_note"}
    assert held["invoice"]["records"] == 1 and held["invoice"]["until"].startswith("2029-01-15")
    for child in ("invoice_line", "invoice_note"):
        # the scheduler erases again the day after each end: the children's end is their invoice's
        assert held[child]["kept_with"] == "invoice" and held[child]["reason"] == HOLD_REASON
        assert held[child]["ends"] == [{"until": held["invoice"]["until"], "records": held[child]["records"]}]
    assert held["invoice_line"]["records"] == 2 and held["invoice_note"]["records"] == 1
    assert "invoice_line: 2 kept unchanged while the invoice record owning them is held " \
           f"({HOLD_REASON})" in receipt.details
    assert receipt.skipped["address"] == {OWNED_BY_SOMEONE_ELSE: 1}
    assert again.changed == {}


def test_the_hold_ends_and_the_children_go_with_their_parent(database: Callable[[], str]) -> None:
    """The scheduled erasure re-runs after the hold: the invoice and everything held with it go then."""
    with built(database) as (connector, engine):
        connector.erase(ALICE)
        later = ConnectorContext(env=connector.ctx.env, secret_key=connector.ctx.secret_key,
                                 now=lambda: datetime(2029, 1, 16, tzinfo=UTC))
        kept = Identities([Identity(IdentityType.ACCOUNT_ID, "1")])  # what the scheduled erasure keeps
        receipt = SqlConnector(connector.name, connector.spec, connector.engine, later).erase(kept)
        after = snapshot(engine)
    assert receipt.held == []
    assert (30,) not in after["invoice"] and set(after["invoice_line"]) == {(320,)} and after["invoice_note"] == {}


def test_deletes_follow_the_foreign_keys(database: Callable[[], str]) -> None:
    """An address the customer row points at is deleted after that row, and still found once it is gone."""
    entities = {
        "customer": {**ENTITIES["customer"], "erase": {"strategy": "delete"}},
        "address": {**ENTITIES["address"], "references": {"id": "customer.address_id"},
                    "erase": {"strategy": "delete"}},
    }
    with built(database, entities) as (connector, engine):
        with engine.begin() as conn:  # nothing else points at the two rows
            for table in ("order_tag", "order_item", "orders", "payment_card", "invoice_line", "invoice_note",
                          "invoice"):
                conn.execute(sa.delete(metadata.tables[table]))
        receipt = connector.erase(ALICE)
        after = snapshot(engine)
    assert receipt.changed == {"customer": 1, "address": 1}
    assert set(after["customer"]) == {(2,), (3,)} and set(after["address"]) == {(2,), (3,), (4,)}


def test_a_key_that_is_not_the_whole_key_stops_the_erasure_naming_the_table(database: Callable[[], str]) -> None:
    """Regression: a composite-key table mapped with one key column crashed with MultipleResultsFound at
    `.one()`, naming no table. Now the erasure stops before touching another row, says which table, and
    nothing is changed; with the whole key declared (the test above) it works."""
    for strategy in ({"strategy": "mask", "mask": {"note": "redact"}}, {"strategy": "delete"}):
        entities = {name: spec for name, spec in ENTITIES.items() if name not in ("product",)}
        entities["order_item"] = {**ENTITIES["order_item"], "primary_key": "order_id", "erase": strategy}
        with built(database, entities) as (connector, engine):
            before = snapshot(engine)
            with pytest.raises(PermanentError) as err:
                connector.erase(ALICE, ["order_item"])
            assert snapshot(engine) == before
        assert "entity order_item: primary_key (order_id) matches several rows of table order_item" in str(err.value)
        assert "alice" not in str(err.value).lower()


def test_the_database_refusing_names_the_table(database: Callable[[], str]) -> None:
    """An erasure the database refuses (a foreign key the map did not say) names the entity and its table."""
    entities = {"customer": {**ENTITIES["customer"], "erase": {"strategy": "delete"}}}
    with built(database, entities) as (connector, engine):
        before = snapshot(engine)
        with pytest.raises(PermanentError) as err:
            connector.erase(ALICE)
        assert snapshot(engine) == before
    assert "entity customer (table customer): the database refused the change, nothing was changed" in str(err.value)


def test_policies_and_risks_say_it() -> None:
    spec = parse_system("shop", settings())
    warnings = risks(spec)
    assert any(w.startswith("entity invoice_note: owned by invoice, whose rows may be held, and declares no hold")
               for w in warnings)
    assert not any(w.startswith("entity invoice_line: owned by") for w in warnings)
    ctx = ConnectorContext(env={"SHAPES_DB_URL": "sqlite://"})
    policies = SqlConnector.from_settings("shop", settings(), ctx).policies()
    assert policies["product"].erase == f"kept, never erased: {KEEP_REASON}"
    assert policies["invoice_line"].hold is None
    assert policies["invoice_line"].erase == \
        "delete rows, except records kept while the invoice record owning them is held"
    assert policies["invoice"].hold is not None and policies["invoice"].hold.years == 5
