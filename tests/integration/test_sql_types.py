"""Issue 10: every column type round-trips, on PostgreSQL and MariaDB.

One table per engine with a column of every type the issue lists, a subject's row and another person's row
holding the same values. An access export gives the documented representation (docs/datamap.md, "Column
types") of each, as JSON and as a CSV cell; every mask strategy `mask_problem` accepts really erases the
subject's value and leaves the other row alone, and every one it refuses is refused; restriction markers
(now, today, a YAML datetime, a quoted timestamp, a boolean, a string) are written in the column's type,
lifted with null, and a second run changes nothing. Expected values are written by hand.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import hmac
import io
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

import orjson
import pytest
import sqlalchemy as sa
import yaml

from connectors.base import ConnectorContext, Identities, Identity, IdentityType, PermanentError
from connectors.sql import SqlConnector
from connectors.sql_map import Fixed
from connectors.sql_values import REDACTED, ValueProblem, marker_problem, mask_problem
from discovery.bundle.build import FORMULA_START, write_csv

pytestmark = pytest.mark.integration

SECRET = b"k" * 32
NOW = datetime(2024, 6, 1, 12, 30, 15, tzinfo=UTC)
SUBJECT, OTHER = "ase@example.no", "ola@example.no"


@dataclass(frozen=True)
class Col:
    name: str
    ddl: str
    literal: str  # the value both rows get, as SQL
    shown: Any  # its export representation
    fixed: Any = None  # a `{fixed: ...}` mask value, as YAML would give it
    fixed_shown: Any = None  # how the fixed value reads back


def b64(data: bytes) -> dict[str, str]:
    return {"base64": base64.b64encode(data).decode()}


PG_COLUMNS = [
    Col("i2", "smallint", "1", 1, "0", 0),
    Col("i4", "integer", "2", 2, 7, 7),
    Col("i8", "bigint", "9007199254740993", 9007199254740993, 0, 0),
    Col("num", "numeric(10,2)", "12.5", "12.50", "0", "0.00"),
    Col("mon", "money", "1234.5", "1234.50", 0, "0.00"),
    Col("txt", "text", "'Åse Ødegård'", "Åse Ødegård", "gone", "gone"),
    Col("vc", "varchar(20)", "'ase'", "ase", "x", "x"),
    Col("ch", "char(5)", "'c'", "c    ", "x", "x    "),
    Col("ba", "bytea", "'\\x0001ff'::bytea", b64(b"\x00\x01\xff"), {"base64": "AA=="}, b64(b"\x00")),
    Col("b", "boolean", "true", True, "no", False),
    Col("d", "date", "'2024-02-29'", "2024-02-29", date(2000, 1, 1), "2000-01-01"),
    Col("tm", "time", "'13:14:15.5'", "13:14:15.500000", "00:00", "00:00:00"),
    Col("tmtz", "timetz", "'13:14:15+02'", "13:14:15+02:00", "00:00:00+00:00", "00:00:00+00:00"),
    Col("ts", "timestamp", "'2024-01-02 03:04:05'", "2024-01-02T03:04:05", "2000-01-01T00:00:00",
        "2000-01-01T00:00:00"),
    Col("tstz", "timestamptz", "'2024-01-02 03:04:05+02'", "2024-01-02T01:04:05+00:00",
        datetime(2000, 1, 1, tzinfo=UTC), "2000-01-01T00:00:00+00:00"),
    Col("iv", "interval", "'1 day 04:05:06.5'", "P1DT4H5M6.5S", "PT0S", "PT0S"),
    Col("u", "uuid", "'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
        "00000000-0000-0000-0000-000000000000", "00000000-0000-0000-0000-000000000000"),
    Col("j", "json", "'{\"a\": [1, 2]}'", {"a": [1, 2]}, {}, {}),
    Col("jb", "jsonb", "'{\"b\": null}'", {"b": None}, [1], [1]),
    Col("arr", "integer[]", "'{1,2}'", [1, 2], [], []),
    Col("tarr", "text[]", "'{\"x,y\",NULL}'", ["x,y", None], ["a"], ["a"]),
    Col("arr2", "integer[][]", "'{{1,2},{3,4}}'", [[1, 2], [3, 4]], [[0]], [[0]]),
    Col("tsarr", "timestamptz[]", "'{\"2024-01-02 03:04:05+02\"}'", ["2024-01-02T01:04:05+00:00"], [], []),
    Col("e", "mood", "'happy'", "happy", "sad", "sad"),
    Col("ip", "inet", "'192.168.1.5'", "192.168.1.5", "0.0.0.0", "0.0.0.0"),
    Col("ipn", "inet", "'10.1.2.3/24'", "10.1.2.3/24", "::1", "::1"),
    Col("net", "cidr", "'10.0.0.0/8'", "10.0.0.0/8", "0.0.0.0/32", "0.0.0.0/32"),
    Col("mac", "macaddr", "'08:00:2b:01:02:03'", "08:00:2b:01:02:03", "00:00:00:00:00:00", "00:00:00:00:00:00"),
    Col("bt", "bit(4)", "B'1010'", "1010", "0000", "0000"),
    Col("vb", "varbit(8)", "B'101'", "101", "0", "0"),
    Col("tsv", "tsvector", "'a fat cat'", "'a' 'cat' 'fat'", "", ""),
    Col("ir", "int4range", "'[1,5)'", {"lower": 1, "upper": 5, "bounds": "[)", "empty": False}, "empty",
        {"lower": None, "upper": None, "bounds": None, "empty": True}),
    Col("nr", "numrange", "'(1.5,2.5]'", {"lower": "1.5", "upper": "2.5", "bounds": "(]", "empty": False},
        {"lower": 0, "upper": 1}, {"lower": "0", "upper": "1", "bounds": "[)", "empty": False}),
    Col("tr", "tstzrange", "'[2024-01-01 00:00+00,)'",
        {"lower": "2024-01-01T00:00:00+00:00", "upper": None, "bounds": "[)", "empty": False}, "empty",
        {"lower": None, "upper": None, "bounds": None, "empty": True}),
    Col("dr", "daterange", "'[2024-01-01,2024-02-01)'",
        {"lower": "2024-01-01", "upper": "2024-02-01", "bounds": "[)", "empty": False},
        {"lower": "2000-01-01", "upper": "2000-01-02"},
        {"lower": "2000-01-01", "upper": "2000-01-02", "bounds": "[)", "empty": False}),
    Col("mr", "int4multirange", "'{[1,3),[5,7)}'", [{"lower": 1, "upper": 3, "bounds": "[)", "empty": False},
                                                     {"lower": 5, "upper": 7, "bounds": "[)", "empty": False}],
        [], []),
    Col("pt", "point", "'(1,2)'", "(1,2)", "(0,0)", "(0,0)"),
    Col("ln", "line", "'{1,2,3}'", "{1,2,3}", "{1,1,0}", "{1,1,0}"),
    Col("ls", "lseg", "'[(0,0),(1,1)]'", "[(0,0),(1,1)]", "[(0,0),(0,1)]", "[(0,0),(0,1)]"),
    Col("bx", "box", "'((0,0),(1,1))'", "(1,1),(0,0)", "(0,0),(0,0)", "(0,0),(0,0)"),
    Col("pa", "path", "'[(0,0),(1,1)]'", "[(0,0),(1,1)]", "[(0,0),(0,1)]", "[(0,0),(0,1)]"),
    Col("pg", "polygon", "'((0,0),(1,1),(1,0))'", "((0,0),(1,1),(1,0))", "((0,0),(0,1),(1,0))",
        "((0,0),(0,1),(1,0))"),
    Col("ci", "circle", "'<(0,0),1>'", "<(0,0),1>", "<(0,0),0>", "<(0,0),0>"),
    Col("x", "xml", "'<a>x</a>'", "<a>x</a>", "<gone/>", "<gone/>"),
    Col("r", "real", "'NaN'", "NaN", 0, 0.0),
    Col("dp", "double precision", "1.5", 1.5, "2.5", 2.5),
]

MARIADB_COLUMNS = [
    Col("i4", "INT", "2", 2, 0, 0),
    Col("i8", "BIGINT", "9007199254740993", 9007199254740993, 0, 0),
    Col("dec_", "DECIMAL(10,2)", "12.5", "12.50", "0", "0.00"),
    Col("bit1", "BIT(1)", "b'1'", "1", "0", "0"),
    Col("bit10", "BIT(10)", "b'0000000101'", "0000000101", "1", "0000000001"),
    Col("yr", "YEAR", "2024", 2024, 2000, 2000),
    Col("en", "ENUM('a','b')", "'b'", "b", "a", "a"),
    Col("st", "SET('x','y','z')", "'z,x'", ["x", "z"], ["y"], ["y"]),
    Col("js", "JSON", "'{\"a\": [1, 2]}'", {"a": [1, 2]}, {}, {}),
    Col("bl", "BLOB", "x'0001ff'", b64(b"\x00\x01\xff"), "", b64(b"")),
    Col("vbin", "VARBINARY(16)", "x'00'", b64(b"\x00"), {"base64": "AQ=="}, b64(b"\x01")),
    Col("tm", "TIME(3)", "'-838:59:59.5'", "-838:59:59.500000", "09:30", "09:30:00"),
    Col("tm0", "TIME", "'13:14:15'", "13:14:15", "PT1H", "01:00:00"),
    Col("dt", "DATETIME(6)", "'2024-01-02 03:04:05.123456'", "2024-01-02T03:04:05.123456",
        datetime(2000, 1, 1), "2000-01-01T00:00:00"),
    Col("ts", "TIMESTAMP NULL", "'2024-01-02 03:04:05'", "2024-01-02T03:04:05", "2000-01-01 00:00:00",
        "2000-01-01T00:00:00"),
    Col("d", "DATE", "'2024-02-29'", "2024-02-29", "2000-01-01", "2000-01-01"),
    Col("flag", "BOOLEAN", "1", 1, False, 0),
    Col("vc", "VARCHAR(20)", "'ase'", "ase", "x", "x"),
    Col("txt", "TEXT", "'Åse Ødegård'", "Åse Ødegård", "gone", "gone"),
    Col("ch", "CHAR(3)", "'ab'", "ab", "x", "x"),
    Col("fl", "FLOAT", "1.5", 1.5, 0, 0.0),
    Col("db", "DOUBLE", "2.5", 2.5, 0, 0.0),
]

# which columns each text-storing strategy may mask (everything else is refused by mask_problem)
ACCEPTED = {
    "postgresql": {"redact": {"txt", "vc", "ba", "j", "jb", "tsv", "x"},
                   "hash": {"txt", "vc", "ch", "ba", "u", "j", "jb", "tsv", "x"}},
    "mariadb": {"redact": {"js", "bl", "vbin", "vc", "txt"},
                "hash": {"js", "bl", "vbin", "vc", "txt", "ch"}},
}

# restriction markers: column DDL per engine, the YAML `set` values, and what each reads back as
MARKER_DDL = {
    "postgresql": {"r_at": "timestamptz", "r_ts": "timestamp", "r_on": "date", "r_flag": "boolean",
                   "r_note": "varchar(40)", "r_str": "timestamptz", "r_dt": "timestamptz", "r_day": "timestamptz",
                   "last_seen": "timestamptz"},
    "mariadb": {"r_at": "DATETIME", "r_ts": "TIMESTAMP NULL", "r_on": "DATE", "r_flag": "BOOLEAN",
                "r_note": "VARCHAR(40)", "r_str": "DATETIME", "r_dt": "DATETIME", "r_day": "DATETIME",
                "last_seen": "DATETIME"},
}
MARKERS_YAML = """
restrict:
  set:
    r_at: now
    r_ts: now
    r_on: today
    r_flag: yes
    r_note: restricted
    r_str: "2024-05-01T10:00:00+02:00"
    r_dt: 2024-05-01T10:00:00Z
    r_day: today
lift:
  set: {r_at: null, r_ts: null, r_on: null, r_flag: no, r_note: null, r_str: null, r_dt: null, r_day: null}
"""
RESTRICTED = {
    "postgresql": {"r_at": "2024-06-01T12:30:15+00:00", "r_ts": "2024-06-01T12:30:15", "r_on": "2024-06-01",
                   "r_flag": True, "r_note": "restricted", "r_str": "2024-05-01T08:00:00+00:00",
                   "r_dt": "2024-05-01T10:00:00+00:00", "r_day": "2024-06-01T00:00:00+00:00"},
    "mariadb": {"r_at": "2024-06-01T12:30:15", "r_ts": "2024-06-01T12:30:15", "r_on": "2024-06-01", "r_flag": 1,
                "r_note": "restricted", "r_str": "2024-05-01T08:00:00", "r_dt": "2024-05-01T10:00:00",
                "r_day": "2024-06-01T00:00:00"},
}
LIFTED = {
    "postgresql": {"r_at": None, "r_ts": None, "r_on": None, "r_flag": False, "r_note": None, "r_str": None,
                   "r_dt": None, "r_day": None},
    "mariadb": {"r_at": None, "r_ts": None, "r_on": None, "r_flag": 0, "r_note": None, "r_str": None, "r_dt": None,
                "r_day": None},
}


@pytest.fixture(params=["postgresql", "mariadb"])
def engine_name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def url(engine_name: str, request: pytest.FixtureRequest) -> str:
    make: Callable[[], str] = request.getfixturevalue("pg_database" if engine_name == "postgresql"
                                                      else "mariadb_database")
    return make()


def columns(engine_name: str) -> list[Col]:
    return PG_COLUMNS if engine_name == "postgresql" else MARIADB_COLUMNS


def create(url: str, engine_name: str) -> None:
    cols = columns(engine_name)
    markers = MARKER_DDL[engine_name]
    ddl = ", ".join([*(f"{c.name} {c.ddl}" for c in cols), *(f"{n} {t}" for n, t in markers.items())])
    with sa.create_engine(url).begin() as conn:
        if engine_name == "postgresql":
            conn.exec_driver_sql("CREATE TYPE mood AS ENUM ('happy', 'sad')")
        conn.exec_driver_sql(f"CREATE TABLE things (id integer PRIMARY KEY, email varchar(100) NOT NULL, {ddl})")
    fill(url, engine_name)


def fill(url: str, engine_name: str) -> None:
    """The subject's row (1) and another person's (2), the same values in every typed column."""
    cols = columns(engine_name)
    names = ", ".join(c.name for c in cols)
    values = ", ".join(c.literal for c in cols)
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql("DELETE FROM things")
        for key, email in ((1, SUBJECT), (2, OTHER)):
            conn.exec_driver_sql(f"INSERT INTO things (id, email, last_seen, {names}) "
                                 f"VALUES ({key}, '{email}', '2020-01-01 00:00:00', {values})")
    engine.dispose()


def settings(engine_name: str, mask: dict[str, Any] | None = None, fields: list[str] | None = None) -> dict[str, Any]:
    entity = yaml.safe_load(MARKERS_YAML)
    entity.update({
        "table": "things",
        "identities": {"email": "email"},
        "fields": {c: "usage" for c in (fields if fields is not None else [c.name for c in columns(engine_name)])},
        "erase": {"strategy": "mask", "mask": mask or {"email": "hash"}},
    })
    return {"kind": "sql", "url_env": "DB", "entities": {"things": entity},
            "inactivity": {"entity": "things", "last_activity": "last_seen"}}


@contextmanager
def connector(url: str, engine_name: str, **kw: Any) -> Iterator[SqlConnector]:
    ctx = ConnectorContext(env={"DB": url}, secret_key=SECRET, now=lambda: NOW)
    conn = SqlConnector.from_settings("shop", settings(engine_name, **kw), ctx)
    try:
        yield conn
    finally:
        conn.close()


def person(email: str) -> Identities:
    return Identities([Identity(IdentityType.EMAIL, email)])


def exported(conn: SqlConnector, email: str) -> dict[str, Any]:
    records = list(conn.export(person(email)))
    assert len(records) == 1
    return dict(records[0].fields)


def reflected(url: str) -> sa.Table:
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        table = sa.Table("things", sa.MetaData(), autoload_with=conn)
    engine.dispose()
    return table


def raw_row(url: str, key: int) -> dict[str, Any]:
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        row = conn.exec_driver_sql(f"SELECT * FROM things WHERE id = {key}").mappings().one()
    engine.dispose()
    return {k: repr(v) for k, v in row.items()}  # repr: NaN is not equal to itself


# -- export ---------------------------------------------------------------------------------

def test_every_type_exports_its_documented_representation(url: str, engine_name: str) -> None:
    create(url, engine_name)
    with connector(url, engine_name) as conn:
        fields = exported(conn, SUBJECT)
    expected = {"id": 1, **{c.name: c.shown for c in columns(engine_name)}}
    assert fields == expected
    assert orjson.loads(orjson.dumps(fields)) == expected  # JSON as it is, no default= hook needed


def test_every_type_gets_a_csv_cell(url: str, engine_name: str) -> None:
    create(url, engine_name)
    with connector(url, engine_name) as conn:
        fields = exported(conn, SUBJECT)
    out = io.BytesIO()
    write_csv(out, list(fields), [fields])  # type: ignore[arg-type]
    rows = list(csv.DictReader(io.StringIO(out.getvalue().decode("utf-8-sig"), newline="")))
    assert len(rows) == 1
    for col in columns(engine_name):
        cell = rows[0][col.name]
        if isinstance(col.shown, dict | list):  # nested values: their JSON text
            assert orjson.loads(cell) == col.shown, col.name
        elif isinstance(col.shown, bool):
            assert cell == ("true" if col.shown else "false"), col.name
        else:  # text a spreadsheet would run as a formula (a negative TIME) gets a leading '
            text = str(col.shown)
            assert cell == ("'" + text if text.startswith(FORMULA_START) else text), col.name


@pytest.mark.parametrize("engine_name", ["postgresql"])  # inet is PostgreSQL's
def test_inet_export_regression(url: str, engine_name: str) -> None:
    """An inet column made psycopg return IPv4Address, and every access request failed."""
    create(url, engine_name)
    with connector(url, engine_name, fields=["ip", "ipn", "net"]) as conn:
        fields = exported(conn, SUBJECT)
    assert fields == {"id": 1, "ip": "192.168.1.5", "ipn": "10.1.2.3/24", "net": "10.0.0.0/8"}
    orjson.dumps(fields)


# -- erasure --------------------------------------------------------------------------------

def digest(column: str) -> bytes:
    return hmac.new(SECRET, f"things:1:{column}".encode(), hashlib.sha256).digest()


def hashed(col: Col, engine_name: str) -> Any:
    """What 'hash' reads back as, computed here from the documented rule."""
    raw = digest(col.name)
    if col.ddl == "uuid":
        return str(uuid.UUID(bytes=raw[:16], version=4))
    if col.ddl in ("bytea", "BLOB"):
        return b64(raw)
    if col.ddl == "VARBINARY(16)":
        return b64(raw[:16])
    text = f"erased-{raw.hex()[:24]}"
    if col.ddl == "char(5)":  # shorter than 15: hex digits only, padded by PostgreSQL
        return raw.hex()[:5]
    if col.ddl == "CHAR(3)":
        return raw.hex()[:3]
    if col.ddl.lower() == "varchar(20)":
        text = text[:20]
    return f"'{text}'" if col.ddl == "tsvector" else text


def redacted(col: Col) -> Any:
    if col.ddl in ("bytea", "BLOB", "VARBINARY(16)"):
        return b64(REDACTED.encode())
    return f"'{REDACTED}'" if col.ddl == "tsvector" else REDACTED


@pytest.mark.parametrize("method", ["null", "redact", "hash", "fixed"])
def test_every_accepted_mask_erases_and_every_refused_one_is_refused(url: str, engine_name: str,
                                                                      method: str) -> None:
    create(url, engine_name)
    table = reflected(url)
    cols = columns(engine_name)
    how = {c.name: (Fixed(fixed=c.fixed) if method == "fixed" else method) for c in cols}
    accepted = [c for c in cols if mask_problem(table.c[c.name], how[c.name]) is None]
    refused = [c for c in cols if c not in accepted]
    if method in ("null", "fixed"):
        assert refused == [], [(c.name, mask_problem(table.c[c.name], how[c.name])) for c in refused]
    else:
        assert {c.name for c in accepted} == ACCEPTED[engine_name][method]
    other_before = raw_row(url, 2)
    mask = {c.name: (method if method != "fixed" else {"fixed": c.fixed}) for c in accepted}
    with connector(url, engine_name, mask=mask) as conn:
        receipt = conn.erase(person(SUBJECT))
        assert receipt.changed == {"things": 1}
        fields = exported(conn, SUBJECT)
        again = conn.erase(person(SUBJECT))
    assert again.changed == {}, "a second erasure changed the masked row again"
    for col in accepted:
        expected = {"null": None, "redact": redacted(col), "hash": hashed(col, engine_name),
                    "fixed": col.fixed_shown}[method]
        assert fields[col.name] == expected, col.name
    assert raw_row(url, 2) == other_before
    for col in refused:
        fill(url, engine_name)
        with connector(url, engine_name, mask={col.name: method}) as conn, \
                pytest.raises((ValueProblem, PermanentError)):
            conn.erase(person(SUBJECT))
        assert raw_row(url, 1)[col.name] == raw_row(url, 2)[col.name], f"{col.name} changed though refused"


def test_a_fixed_value_that_cannot_be_stored_is_refused(url: str, engine_name: str) -> None:
    create(url, engine_name)
    table = reflected(url)
    bad: dict[str, dict[str, Any]] = {
        "postgresql": {"i4": "many", "d": "soon", "tstz": "soon", "e": "angry", "ip": "nowhere", "bt": "10",
                       "vc": "x" * 21, "b": "maybe", "u": "not-a-uuid", "arr": "1,2", "iv": "P1M"},
        "mariadb": {"i4": "many", "d": "soon", "dt": "soon", "en": "c", "st": ["q"], "bit1": "11",
                    "vc": "x" * 21, "yr": 1800, "tm": "later"}}
    for column, value in bad[engine_name].items():
        assert mask_problem(table.c[column], Fixed(fixed=value)), column


# -- restriction markers --------------------------------------------------------------------

def test_markers_are_written_in_the_column_type_lifted_with_null_and_idempotent(url: str, engine_name: str) -> None:
    create(url, engine_name)
    markers = list(RESTRICTED[engine_name])
    table = reflected(url)
    spec = yaml.safe_load(MARKERS_YAML)
    assert isinstance(spec["restrict"]["set"]["r_dt"], datetime)  # YAML's own datetime, as in a data map
    for column in markers:
        assert marker_problem(table.c[column], spec["restrict"]["set"][column]) is None, column
        assert marker_problem(table.c[column], spec["lift"]["set"][column]) is None, column
    other_before = raw_row(url, 2)
    with connector(url, engine_name, fields=markers) as conn:
        first = conn.restrict(person(SUBJECT))
        assert first.changed == {"things": 1}
        orjson.dumps(first.to_dict())
        assert {k: v for k, v in exported(conn, SUBJECT).items() if k != "id"} == RESTRICTED[engine_name]
        assert conn.restrict(person(SUBJECT)).changed == {}  # already restricted: nothing changes
        # restricted rows are left out of the inactivity sweep (the `carries` comparison, in the column's type)
        inactive = [email for email, _ in conn.inactive_subjects(datetime(2021, 1, 1, tzinfo=UTC))]
        assert inactive == [OTHER]
        assert conn.lift_restriction(person(SUBJECT)).changed == {"things": 1}
        assert {k: v for k, v in exported(conn, SUBJECT).items() if k != "id"} == LIFTED[engine_name]
        assert conn.lift_restriction(person(SUBJECT)).changed == {}
    assert raw_row(url, 2) == other_before


@pytest.mark.parametrize("marker", ["'2024-05-01T10:00:00+02:00'", "2024-05-01T10:00:00+02:00"])
def test_timestamptz_marker_regression(url: str, engine_name: str, marker: str) -> None:
    """A timestamptz marker: quoted, the query compared timestamptz <> varchar; unquoted, YAML made a datetime."""
    create(url, engine_name)
    entity_set = yaml.safe_load(f"{{r_str: {marker}}}")
    with connector(url, engine_name, fields=["r_str"]) as conn:
        conn.spec.entities["things"].restrict.set = entity_set  # type: ignore[union-attr]
        assert conn.restrict(person(SUBJECT)).changed == {"things": 1}
        assert conn.restrict(person(SUBJECT)).changed == {}
        expected = "2024-05-01T08:00:00+00:00" if engine_name == "postgresql" else "2024-05-01T08:00:00"
        assert exported(conn, SUBJECT)["r_str"] == expected


def test_markers_that_cannot_be_cast_are_refused(url: str, engine_name: str) -> None:
    create(url, engine_name)
    table = reflected(url)
    assert marker_problem(table.c["r_at"], "soon")
    assert marker_problem(table.c["r_flag"], "maybe")
    assert marker_problem(table.c["r_on"], datetime(2024, 1, 1, 10, 0))  # a time of day in a date column
    assert marker_problem(table.c["email"], None)  # NOT NULL
    assert marker_problem(table.c["r_flag"], "now")
    assert marker_problem(table.c["r_flag"], "yes") is None
