"""Issue 10 point 7: `dsar check` on a SQL system catches what would crash an access, erasure or restriction,
on PostgreSQL and MariaDB, and changes nothing while it looks.

Each schema is written here by hand; what is wrong with it is known before the check runs. Tests that need
`sql_values` to understand a column type (inet) say so: they fail until it does.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa

from connectors import sql_values
from connectors.base import ConnectorContext, Health, Identities, Identity, IdentityType
from connectors.sql import SqlConnector
from connectors.sql_check import read_only
from connectors.sql_map import EntitySpec, Fixed, parse_system

pytestmark = pytest.mark.integration

URL_ENV = "DSAR_CHECK_DB_URL"

# column types that differ between the dialects
TYPES = {
    "postgresql": {"moment": "timestamptz", "uuid": "uuid", "json": "jsonb"},
    "mariadb": {"moment": "datetime(6)", "uuid": "char(36)", "json": "json"},
}

SCHEMA = """
CREATE TABLE customers (
    id integer PRIMARY KEY,
    email varchar(200) NOT NULL,
    name text,
    phone varchar(40),
    code varchar(3),
    born date,
    balance numeric(10, 2),
    score integer NOT NULL DEFAULT 0,
    active boolean NOT NULL DEFAULT true,
    restricted_at {moment},
    token {uuid},
    prefs {json}
);
CREATE INDEX ix_customers_phone ON customers (phone);
CREATE TABLE orders (
    id integer PRIMARY KEY,
    customer_id integer NOT NULL,
    customer_ref varchar(20),
    note text,
    total numeric(10, 2)
);
CREATE INDEX ix_orders_customer ON orders (customer_id);
CREATE TABLE visits (
    id integer PRIMARY KEY,
    session varchar(40) NOT NULL,
    customer_id integer NOT NULL
);
CREATE INDEX ix_visits_session ON visits (session);
"""

ROWS = {
    "customers": [
        {"id": 1, "email": "jane@example.com", "name": "Jane", "phone": "+4790000001", "code": "abc",
         "born": "1980-02-29", "balance": Decimal("12.50"), "score": 3, "active": True, "restricted_at": None,
         "token": "6f0c5d0e-6d1b-4a39-9a57-1b1f0c1b2a10", "prefs": '{"lang": "nb"}'},
        {"id": 2, "email": "ola@example.com", "name": None, "phone": None, "code": None, "born": None,
         "balance": None, "score": 0, "active": False, "restricted_at": "2024-05-01 10:00:00", "token": None,
         "prefs": None},
    ],
    "orders": [
        {"id": 10, "customer_id": 1, "customer_ref": "1", "note": "gift wrap", "total": Decimal("99.90")},
        {"id": 11, "customer_id": 2, "customer_ref": "2", "note": None, "total": Decimal("5.00")},
    ],
    "visits": [
        {"id": 100, "session": "s-1", "customer_id": 1},
        {"id": 101, "session": "s-1", "customer_id": 1},  # a session spans several visits: not a key
    ],
}

ENTITIES: dict[str, Any] = {
    "customers": {
        "table": "customers",
        "identities": {"email": "email", "phone": "phone"},
        "fields": {c: "contact" for c in ("email", "name", "phone", "code", "born", "balance", "score", "active",
                                           "restricted_at", "token", "prefs")},
        "erase": {"strategy": "mask", "mask": {"email": "hash", "name": "redact", "phone": "null", "born": "null",
                                               "balance": {"fixed": 0}, "score": {"fixed": 0}, "code": "null",
                                               "token": "null", "prefs": "null"}},
        "restrict": {"set": {"restricted_at": "now", "active": False}},
        "lift": {"set": {"restricted_at": None, "active": True}},
    },
    "orders": {
        "table": "orders",
        "references": {"customer_id": "customers.id"},
        "fields": {"customer_ref": "billing", "note": "billing", "total": "billing"},
        "erase": {"strategy": "mask", "mask": {"note": "redact"}},
    },
    "visits": {
        "table": "visits",
        "references": {"customer_id": "customers.id"},
        "fields": {"session": "usage"},
        "erase": {"strategy": "delete"},
    },
}


@pytest.fixture(params=["postgresql", "mariadb"])
def database(request: pytest.FixtureRequest) -> tuple[str, Callable[[], str]]:
    """(dialect, a factory of fresh empty databases dropped after the test)."""
    fixture = "pg_database" if request.param == "postgresql" else "mariadb_database"
    return request.param, request.getfixturevalue(fixture)


def build(url: str, dialect: str, extra: str = "") -> sa.Engine:
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        for statement in (SCHEMA.format(**TYPES[dialect]) + extra).split(";"):
            if statement.strip():
                conn.exec_driver_sql(statement)
        for table, rows in ROWS.items():  # plain SQL: the database converts the text (a JSON document, a uuid)
            columns = list(rows[0])
            conn.execute(sa.text(f"INSERT INTO {table} ({', '.join(columns)}) "
                                 f"VALUES ({', '.join(':' + c for c in columns)})"), rows)
    return engine


@contextmanager
def checked(database: tuple[str, Callable[[], str]], entities: dict[str, Any] | None = None,
            extra: str = "") -> Iterator[tuple[Health, sa.Engine]]:
    """The check's result on a fresh copy of the schema (plus `extra` DDL), with the map's `entities`."""
    dialect, make = database
    url = make()
    engine = build(url, dialect, extra)
    connector = connector_for(url, entities or ENTITIES)
    try:
        yield connector.check(), engine
    finally:
        connector.close()
        engine.dispose()


def connector_for(url: str, entities: dict[str, Any]) -> SqlConnector:
    ctx = ConnectorContext(env={URL_ENV: url}, secret_key=b"check-test-key")
    return SqlConnector.from_settings("shop", {"kind": "sql", "url_env": URL_ENV, "entities": entities}, ctx)


def changed(**edits: dict[str, Any]) -> dict[str, Any]:
    """ENTITIES with the given entities' keys replaced."""
    out = copy.deepcopy(ENTITIES)
    for name, keys in edits.items():
        out.setdefault(name, {}).update(keys)
    return out


def one_line_each(health: Health) -> None:
    assert all("\n" not in line for line in health.problems + health.warnings), health.problems


def about(health: Health, text: str) -> list[str]:
    return [p for p in health.problems if text in p]


def test_a_clean_schema_has_no_problems(database: tuple[str, Callable[[], str]]) -> None:
    """Every column type of the schema is masked, marked, referenced and exported: nothing to say."""
    with checked(database) as (health, _engine):
        assert health.problems == [] and health.ok
        one_line_each(health)


def test_a_time_marker_given_as_a_word_is_a_problem(database: tuple[str, Callable[[], str]]) -> None:
    entities = changed(customers={"restrict": {"set": {"restricted_at": "yes"}}})
    with checked(database, entities) as (health, _engine):
        found = about(health, "entity customers: restrict sets customers.restricted_at to 'yes'")
        assert len(found) == 1, health.problems
        assert not health.ok
        one_line_each(health)


def test_mask_values_the_column_cannot_hold_are_problems(database: tuple[str, Callable[[], str]]) -> None:
    mask = {**ENTITIES["customers"]["erase"]["mask"], "score": {"fixed": "unknown"}, "code": {"fixed": "toolong"},
            "born": "redact"}
    entities = changed(customers={"erase": {"strategy": "mask", "mask": mask}})
    with checked(database, entities) as (health, _engine):
        for what in ("erase.mask customers.score (fixed 'unknown')", "erase.mask customers.code (fixed 'toolong')",
                     "erase.mask customers.born (redact)"):
            assert len(about(health, f"entity customers: {what}: ")) == 1, (what, health.problems)
        assert len(health.problems) == 3, health.problems  # the good masks are not reported
        one_line_each(health)


def test_the_database_refuses_what_sql_values_would_let_through(
        database: tuple[str, Callable[[], str]], monkeypatch: pytest.MonkeyPatch) -> None:
    """Belt and braces: with sql_values knowing nothing of the column types (values passed on as the map gives
    them), the database itself still refuses each value the mask and marker tests above use."""
    monkeypatch.setattr(sql_values, "mask_problem", lambda column, method: None)
    monkeypatch.setattr(sql_values, "marker_problem", lambda column, value: None)

    def mask_value(column: sa.Column[Any], method: Any, *, row: str, secret_key: bytes) -> Any:
        if isinstance(method, Fixed):
            return method.fixed
        return {"null": None, "redact": sql_values.REDACTED}.get(method, "erased-0123456789abcdef01234567")

    monkeypatch.setattr(sql_values, "mask_value", mask_value)
    monkeypatch.setattr(sql_values, "marker_value", lambda column, value, now: now if value == "now" else value)
    mask = {**ENTITIES["customers"]["erase"]["mask"], "score": {"fixed": "unknown"}, "code": {"fixed": "toolong"},
            "born": "redact"}
    entities = changed(customers={"erase": {"strategy": "mask", "mask": mask},
                                  "restrict": {"set": {"restricted_at": "yes", "active": False}}})
    with checked(database, entities) as (health, _engine):
        for what in ("erase.mask customers.score (fixed 'unknown')", "erase.mask customers.code (fixed 'toolong')",
                     "erase.mask customers.born (redact)", "restrict sets customers.restricted_at to 'yes'"):
            found = about(health, f"entity customers: {what}: the database ")
            assert len(found) == 1, (what, health.problems)
        assert len(health.problems) == 4, health.problems
        one_line_each(health)


def test_a_reference_from_text_to_an_integer_is_a_problem(database: tuple[str, Callable[[], str]]) -> None:
    entities = changed(orders={"references": {"customer_ref": "customers.id"}})
    with checked(database, entities) as (health, _engine):
        assert about(health, "entity orders: reference orders.customer_ref (text) -> customers.id (integer)"), \
            health.problems
        assert len(health.problems) == 1, health.problems
        one_line_each(health)


def test_a_key_the_database_does_not_keep_unique_is_a_problem(database: tuple[str, Callable[[], str]]) -> None:
    entities = changed(visits={"primary_key": "session"})
    with checked(database, entities) as (health, _engine):
        assert about(health, "entity visits: key session of table visits has no primary key or unique constraint"), \
            health.problems
        assert len(health.problems) == 1, health.problems
    # a unique index is as good as a primary key
    entities = changed(customers={"primary_key": "email"})
    with checked(database, entities, extra=";CREATE UNIQUE INDEX ux_customers_email ON customers (email)") \
            as (health, _engine):
        assert not about(health, "key email"), health.problems


@pytest.mark.skipif(not hasattr(EntitySpec, "key_columns"), reason="composite keys are not in the data map yet")
def test_composite_keys_must_be_unique_together(database: tuple[str, Callable[[], str]]) -> None:
    extra = """;CREATE TABLE order_items (order_id integer NOT NULL, line integer NOT NULL, sku varchar(20),
                                          PRIMARY KEY (order_id, line));
               CREATE TABLE order_notes (order_id integer NOT NULL, line integer NOT NULL, body text);
               CREATE INDEX ix_order_notes ON order_notes (order_id, line)"""
    items = {"references": {"order_id": "orders.id"}, "fields": {"sku": "billing"}, "erase": {"strategy": "delete"},
             "primary_key": ["order_id", "line"]}
    entities = changed(order_items={**items, "table": "order_items"},
                       order_notes={**items, "table": "order_notes", "fields": {"body": "billing"}})
    with checked(database, entities, extra) as (health, _engine):
        assert not about(health, "table order_items"), health.problems
        assert about(health, "entity order_notes: key order_id, line of table order_notes has no primary key"), \
            health.problems


def test_a_value_the_export_cannot_write_is_a_problem_naming_the_column(
        database: tuple[str, Callable[[], str]], monkeypatch: pytest.MonkeyPatch) -> None:
    """A column type sql_values does not know (here: Decimal, left as it is) would stop every access export."""
    real = sql_values.jsonable

    def jsonable(value: Any, column: sa.Column[Any] | None = None) -> Any:
        return value if isinstance(value, Decimal) else real(value, column)

    monkeypatch.setattr(sql_values, "jsonable", jsonable)
    with checked(database) as (health, _engine):
        balance = about(health, "entity customers: column customers.balance (")
        assert len(balance) == 1 and "decimal.Decimal values the export cannot write (TypeError)" in balance[0], \
            health.problems
        assert about(health, "entity orders: column orders.total ("), health.problems
        # the line names the column and the type, never a value
        assert not any(v in p for p in health.problems for v in ("12.5", "99.9", "Jane", "jane@"))
        one_line_each(health)


class Unreadable(sa.types.TypeDecorator[Decimal]):
    """A column type whose values cannot be read back, like a driver meeting a value it does not parse."""

    impl = sa.Numeric
    cache_ok = True

    def process_result_value(self, value: Any, dialect: Any) -> Any:
        if value is not None:
            raise ValueError(f"cannot read {value}")  # the value in the message, as drivers do
        return value


def test_a_column_whose_values_cannot_be_read_is_a_problem_naming_it(
        database: tuple[str, Callable[[], str]]) -> None:
    def reflect(_inspector: Any, table: sa.Table, info: dict[str, Any]) -> None:
        if table.name == "orders" and info["name"] == "total":
            info["type"] = Unreadable()

    sa.event.listen(sa.Table, "column_reflect", reflect)
    try:
        with checked(database) as (health, _engine):
            found = about(health, "entity orders: column orders.total (")
            assert len(found) == 1 and found[0].endswith("reading its values failed: ValueError"), health.problems
            assert len(health.problems) == 1, health.problems  # the other columns of the table read fine
            assert not any("99.9" in p for p in health.problems)
    finally:
        sa.event.remove(sa.Table, "column_reflect", reflect)


@pytest.mark.parametrize("native", [False, True], ids=["inet-as-text", "inet-as-ipaddress"])
def test_an_inet_column_is_exported(pg_database: Callable[[], str], native: bool) -> None:
    """The defect seen: an inet column broke every access export while `dsar check` said nothing. SQLAlchemy
    hands inet values over as text by default; with native_inet_types the driver's ipaddress objects arrive,
    which only a jsonable that knows them writes (the inet-as-ipaddress case depends on sql_values' export of
    network types: before it, the check names both columns, as it should). The check and the export agree."""
    url = pg_database()
    engine = build(url, "postgresql", ";ALTER TABLE customers ADD COLUMN last_ip inet, ADD COLUMN net cidr")
    with engine.begin() as conn:
        conn.exec_driver_sql("UPDATE customers SET last_ip = '192.0.2.7', net = '2001:db8::/32' WHERE id = 1")
    entities = changed(customers={"fields": {**ENTITIES["customers"]["fields"], "last_ip": "usage", "net": "usage"}})
    settings = {"kind": "sql", "url_env": URL_ENV, "entities": entities}
    ctx = ConnectorContext(env={URL_ENV: url}, secret_key=b"check-test-key")
    connector = SqlConnector("shop", parse_system("shop", settings), sa.create_engine(url, native_inet_types=native),
                             ctx)
    try:
        health = connector.check()
        assert health.problems == [], health.problems
        exported = list(connector.export(Identities([Identity(IdentityType.EMAIL, "jane@example.com")]),
                                         ["customers"]))
        assert [r.fields["last_ip"] for r in exported] == ["192.0.2.7"]
    finally:
        connector.close()
        engine.dispose()


def fingerprint(engine: sa.Engine) -> dict[str, tuple[int, str]]:
    """Per table: its row count and a digest of every row, in key order."""
    out = {}
    with engine.connect() as conn:
        metadata = sa.MetaData()
        metadata.reflect(conn)
        for name, table in metadata.tables.items():
            rows = conn.execute(sa.select(table).order_by(*table.primary_key.columns)).all()
            out[name] = (len(rows), hashlib.sha256(repr([tuple(r) for r in rows]).encode()).hexdigest())
    return out


WRITES = ("INSERT", "UPDATE", "DELETE", "MERGE", "CREATE", "ALTER", "DROP", "TRUNCATE", "GRANT", "REPLACE")


def test_the_check_never_writes(database: tuple[str, Callable[[], str]]) -> None:
    """Run on a map with a problem of every kind (so every path of the check runs): every table is the same
    afterwards, and no statement the check sent could write (EXPLAIN plans an UPDATE without running it)."""
    dialect, make = database
    url = make()
    engine = build(url, dialect)
    mask = {**ENTITIES["customers"]["erase"]["mask"], "score": {"fixed": "unknown"}}
    entities = changed(customers={"erase": {"strategy": "mask", "mask": mask},
                                  "restrict": {"set": {"restricted_at": "yes", "active": False}}},
                       orders={"references": {"customer_ref": "customers.id"}},
                       visits={"primary_key": "session"})
    connector = connector_for(url, entities)
    sent: list[str] = []
    sa.event.listen(connector.engine, "before_cursor_execute",
                    lambda _c, _cur, statement, *_rest: sent.append(statement.strip().upper()))
    try:
        before = fingerprint(engine)
        health = connector.check()
        assert len(health.problems) == 4, health.problems
        assert fingerprint(engine) == before
        assert any(s.startswith("EXPLAIN UPDATE") or s.startswith("SELECT CAST") for s in sent), sent
        # EXPLAIN without ANALYZE plans a statement and runs nothing
        writes = [s for s in sent if s.startswith(WRITES) or s.startswith("EXPLAIN ANALYZE")]
        assert writes == []
    finally:
        connector.close()
        engine.dispose()


def test_the_probe_runs_in_a_transaction_the_database_keeps_read_only(
        database: tuple[str, Callable[[], str]]) -> None:
    dialect, make = database
    engine = build(make(), dialect)
    try:
        with read_only(engine) as conn, pytest.raises(sa.exc.DBAPIError, match=r"(?i)read.only"):
            conn.execute(sa.text("UPDATE visits SET session = 'x' WHERE id = 100"))
        assert fingerprint(engine)["visits"][0] == 2
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT session FROM visits WHERE id = 100")).scalar_one() == "s-1"
    finally:
        engine.dispose()
