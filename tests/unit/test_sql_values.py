"""connectors.sql_values without a database: one representation per type, masks, markers, and what
`dsar check` refuses. The same rules run against real PostgreSQL and MariaDB in
tests/integration/test_sql_types.py."""

from __future__ import annotations

import ipaddress
import uuid
from datetime import UTC, date, datetime, time, timedelta, timezone
from decimal import Decimal
from typing import Any

import orjson
import pytest
import sqlalchemy as sa
import yaml
from sqlalchemy.dialects import mysql, postgresql
from sqlalchemy.dialects.postgresql import BitString, MultiRange, Range

from connectors.sql_map import Fixed
from connectors.sql_values import (
    NOW,
    REDACTED,
    TODAY,
    Duration,
    Opaque,
    ValueProblem,
    carries,
    iso_duration,
    jsonable,
    marker_problem,
    marker_text,
    marker_value,
    mask_problem,
    mask_value,
    parse_duration,
    same,
)

KEY = b"k" * 32
MOMENT = datetime(2024, 6, 1, 12, 30, 15, tzinfo=UTC)


def col(type_: Any, name: str = "c", nullable: bool = True) -> sa.Column[Any]:
    return sa.Column(name, type_, nullable=nullable)


@pytest.mark.parametrize(("type_", "value", "shown"), [
    (sa.Integer(), 7, 7),
    (sa.Numeric(10, 2), Decimal("12.50"), "12.50"),
    (postgresql.MONEY(), "-$1,234.50", "-1234.50"),
    (postgresql.MONEY(), "1 234,50 kr", "1 234,50 kr"),  # another lc_monetary: the database's text
    (sa.CHAR(5), "c    ", "c    "),
    (postgresql.BYTEA(), b"\x00\x01\xff", {"base64": "AAH/"}),
    (postgresql.BYTEA(), memoryview(b"ab"), {"base64": "YWI="}),
    (sa.Boolean(), True, True),
    (sa.Date(), date(2024, 2, 29), "2024-02-29"),
    (sa.Time(), time(13, 14, 15, 500000), "13:14:15.500000"),
    (sa.Time(timezone=True), time(13, 14, tzinfo=timezone(timedelta(hours=2))), "13:14:00+02:00"),
    (sa.DateTime(), datetime(2024, 1, 2, 3, 4, 5), "2024-01-02T03:04:05"),
    (sa.DateTime(timezone=True), datetime(2024, 1, 2, 3, 4, 5, tzinfo=timezone(timedelta(hours=2))),
     "2024-01-02T01:04:05+00:00"),
    (postgresql.INTERVAL(), timedelta(days=1, hours=4, minutes=5, seconds=6.5), "P1DT4H5M6.5S"),
    (postgresql.INTERVAL(), -timedelta(hours=1), "-PT1H"),
    (postgresql.INTERVAL(), timedelta(0), "PT0S"),
    (Duration(), timedelta(hours=-838, minutes=-59, seconds=-59.5), "-838:59:59.500000"),
    (Duration(), timedelta(hours=9, minutes=30), "09:30:00"),
    (sa.Uuid(), uuid.UUID(int=1), "00000000-0000-0000-0000-000000000001"),
    (postgresql.JSONB(), {"a": [1, None]}, {"a": [1, None]}),
    (postgresql.JSON(), "just text", "just text"),
    (postgresql.ARRAY(sa.DateTime(timezone=True)), [datetime(2024, 1, 1, tzinfo=UTC), None],
     ["2024-01-01T00:00:00+00:00", None]),
    (postgresql.ARRAY(sa.Integer()), [[1, 2], [3, 4]], [[1, 2], [3, 4]]),
    (postgresql.INET(), ipaddress.ip_address("192.168.1.5"), "192.168.1.5"),
    (postgresql.INET(), ipaddress.ip_interface("10.1.2.3/24"), "10.1.2.3/24"),
    (postgresql.CIDR(), ipaddress.ip_network("2001:db8::/32"), "2001:db8::/32"),
    (postgresql.BIT(4), BitString("1010"), "1010"),
    (mysql.BIT(10), 5, "0000000101"),
    (mysql.YEAR(), 2024, 2024),
    (mysql.SET("x", "y", "z"), {"z", "x"}, ["x", "z"]),
    (postgresql.INT4RANGE(), Range(1, 5, bounds="[)"), {"lower": 1, "upper": 5, "bounds": "[)", "empty": False}),
    (postgresql.DATERANGE(), Range(empty=True), {"lower": None, "upper": None, "bounds": None, "empty": True}),
    (postgresql.INT4MULTIRANGE(), MultiRange([Range(1, 3)]),
     [{"lower": 1, "upper": 3, "bounds": "[)", "empty": False}]),
    (Opaque("point"), "(1,2)", "(1,2)"),
    (sa.Float(), float("nan"), "NaN"),
    (sa.Float(), float("-inf"), "-Infinity"),
    (mysql.DOUBLE(), Decimal("2.5000000000"), 2.5),
])
def test_each_type_has_one_json_representation(type_: Any, value: Any, shown: Any) -> None:
    out = jsonable(value, col(type_))
    assert out == shown
    assert orjson.loads(orjson.dumps(out)) == shown


def test_unknown_values_fall_back_to_their_text() -> None:
    """A driver type nobody taught jsonable (the inet defect) must never fail an access request."""
    class Odd:
        def __str__(self) -> str:
            return "odd"
    assert jsonable(Odd(), col(sa.String())) == "odd"
    assert jsonable(ipaddress.ip_address("::1")) == "::1"  # no column at all


def test_iso_durations_parse_back() -> None:
    for delta in (timedelta(days=3, seconds=7.25), -timedelta(minutes=90), timedelta(0)):
        assert parse_duration(iso_duration(delta)) == delta
    assert parse_duration("09:30") == timedelta(hours=9, minutes=30)
    assert parse_duration("-838:59:59") == -timedelta(hours=838, minutes=59, seconds=59)
    for bad in ("P1M", "P", "PT", "soon", "1 day"):
        with pytest.raises(ValueProblem):
            parse_duration(bad)


# -- masks ----------------------------------------------------------------------------------

def test_redact_and_hash_store_text_where_text_fits() -> None:
    text = col(sa.String(40))
    assert mask_value(text, "redact", row="t:1", secret_key=KEY) == REDACTED
    hashed = mask_value(text, "hash", row="t:1", secret_key=KEY)
    assert hashed.startswith("erased-") and len(hashed) == 31
    assert hashed == mask_value(text, "hash", row="t:1", secret_key=KEY)  # deterministic
    assert hashed != mask_value(text, "hash", row="t:2", secret_key=KEY)
    assert len(mask_value(col(sa.String(20)), "hash", row="t:1", secret_key=KEY)) == 20
    short = mask_value(col(sa.CHAR(5)), "hash", row="t:1", secret_key=KEY)
    assert len(short) == 5 and not short.startswith("erase")  # hex digits, not a prefix every row shares
    assert mask_value(col(postgresql.TSVECTOR()), "redact", row="t:1", secret_key=KEY) == f"'{REDACTED}'"
    assert mask_value(col(postgresql.JSONB()), "redact", row="t:1", secret_key=KEY) == REDACTED


def test_hash_of_uuid_and_bytes_are_of_their_type() -> None:
    u = mask_value(col(sa.Uuid()), "hash", row="t:1", secret_key=KEY)
    assert isinstance(u, uuid.UUID) and u.version == 4
    assert u == mask_value(col(sa.Uuid()), "hash", row="t:1", secret_key=KEY)
    assert len(mask_value(col(postgresql.BYTEA()), "hash", row="t:1", secret_key=KEY)) == 32
    assert len(mask_value(col(sa.VARBINARY(16)), "hash", row="t:1", secret_key=KEY)) == 16
    assert mask_value(col(sa.LargeBinary()), "redact", row="t:1", secret_key=KEY) == REDACTED.encode()


@pytest.mark.parametrize("type_", [sa.Integer(), sa.Numeric(10, 2), sa.Boolean(), sa.Date(), sa.DateTime(),
                                   postgresql.INTERVAL(), postgresql.INET(), postgresql.CIDR(),
                                   postgresql.MACADDR(), postgresql.BIT(4), postgresql.ARRAY(sa.Text()),
                                   postgresql.INT4RANGE(), sa.Enum("a", "b", name="e"), mysql.SET("x"),
                                   mysql.YEAR(), Duration(), Opaque("point"), postgresql.MONEY()])
def test_redact_and_hash_are_refused_where_text_cannot_be_stored(type_: Any) -> None:
    column = col(type_)
    for method in ("redact", "hash"):
        problem = mask_problem(column, method)
        assert problem and "use null" in problem and "\n" not in problem
        with pytest.raises(ValueProblem):
            mask_value(column, method, row="t:1", secret_key=KEY)
    assert mask_problem(column, "null") is None


def test_redact_is_refused_where_it_does_not_fit() -> None:
    assert "at most 5 characters" in (mask_problem(col(sa.CHAR(5)), "redact") or "")
    assert mask_problem(col(sa.CHAR(5)), "hash") is None
    assert mask_problem(col(sa.Uuid()), "hash") is None
    assert mask_problem(col(sa.Uuid()), "redact")


@pytest.mark.parametrize(("type_", "fixed", "stored"), [
    (sa.Date(), "2000-01-01", date(2000, 1, 1)),
    (sa.Date(), date(2000, 1, 1), date(2000, 1, 1)),
    (sa.DateTime(timezone=True), datetime(2000, 1, 1), datetime(2000, 1, 1, tzinfo=UTC)),
    (sa.DateTime(), "2000-01-01T02:00:00+02:00", datetime(2000, 1, 1)),
    (sa.Integer(), "7", 7),
    (mysql.INTEGER(unsigned=True), 2**32 - 1, 2**32 - 1),
    (mysql.TINYINT(display_width=1), "no", 0),
    (sa.Boolean(), "yes", True),
    (sa.Numeric(10, 2), 0, Decimal(0)),
    (postgresql.INET(), "0.0.0.0", ipaddress.ip_address("0.0.0.0")),
    (postgresql.BIT(4), "0000", BitString("0000")),
    (mysql.BIT(10), "1", 1),
    (mysql.SET("x", "y"), "y,x", {"x", "y"}),
    (postgresql.ARRAY(sa.Date()), ["2000-01-01"], [date(2000, 1, 1)]),
    (postgresql.BYTEA(), {"base64": "AA=="}, b"\x00"),
    (postgresql.DATERANGE(), {"lower": "2000-01-01", "upper": None}, Range(date(2000, 1, 1), None)),
    (Duration(), "09:30", timedelta(hours=9, minutes=30)),
    (sa.Enum("a", "b", name="e"), "b", "b"),
])
def test_fixed_values_are_cast_to_the_column(type_: Any, fixed: Any, stored: Any) -> None:
    column = col(type_)
    assert mask_problem(column, Fixed(fixed=fixed)) is None
    assert mask_value(column, Fixed(fixed=fixed), row="t:1", secret_key=KEY) == stored


@pytest.mark.parametrize(("type_", "fixed"), [
    (sa.Date(), "soon"), (sa.Date(), datetime(2000, 1, 1, 10)), (sa.Integer(), "many"), (sa.SmallInteger(), 40000),
    (mysql.TINYINT(unsigned=True), -1),
    (sa.Boolean(), "maybe"), (sa.Numeric(4, 2), "123.45"), (sa.String(3), "toolong"), (postgresql.INET(), "x"),
    (postgresql.CIDR(), "10.0.0.1/8"), (postgresql.BIT(4), "10"), (mysql.BIT(1), "11"), (mysql.SET("x"), ["q"]),
    (sa.Enum("a", name="e"), "z"), (sa.Uuid(), "nope"), (postgresql.JSONB(), date(2000, 1, 1)),
    (postgresql.ARRAY(sa.Integer()), "1,2"), (postgresql.INTERVAL(), "P1M"), (mysql.YEAR(), 1800),
    (postgresql.INT4RANGE(), {"lower": 1, "bounds": "<>"}), (postgresql.MACADDR(), "nope"),
])
def test_fixed_values_that_cannot_be_stored_are_refused(type_: Any, fixed: Any) -> None:
    problem = mask_problem(col(type_), Fixed(fixed=fixed))
    assert problem and problem.startswith("column c (") and "\n" not in problem
    with pytest.raises(ValueProblem):
        mask_value(col(type_), Fixed(fixed=fixed), row="t:1", secret_key=KEY)


def test_a_rerun_sees_the_masked_value_as_the_same() -> None:
    assert same("x    ", "x")  # CHAR padding
    assert same("$0.00", Decimal("0"))  # money comes back formatted
    assert not same("$1.00", Decimal("0"))
    assert not same(None, "x") and same(None, None)


# -- markers --------------------------------------------------------------------------------

def test_now_and_today_take_the_column_type() -> None:
    assert marker_value(col(sa.DateTime(timezone=True)), NOW, MOMENT) == MOMENT
    assert marker_value(col(sa.DateTime()), NOW, MOMENT) == datetime(2024, 6, 1, 12, 30, 15)
    assert marker_value(col(sa.Date()), NOW, MOMENT) == date(2024, 6, 1)
    assert marker_value(col(sa.Date()), TODAY, MOMENT) == date(2024, 6, 1)
    assert marker_value(col(sa.DateTime(timezone=True)), TODAY, MOMENT) == datetime(2024, 6, 1, tzinfo=UTC)
    assert marker_value(col(sa.DateTime()), TODAY, MOMENT) == datetime(2024, 6, 1)
    assert marker_value(col(sa.String(40)), NOW, MOMENT) == "2024-06-01T12:30:15+00:00"
    assert marker_value(col(sa.Time()), NOW, MOMENT) == time(12, 30, 15)
    with pytest.raises(ValueProblem):
        marker_value(col(sa.Boolean()), NOW, MOMENT)


def test_yaml_values_are_cast() -> None:
    values = yaml.safe_load("{at: 2024-05-01T10:00:00Z, quoted: '2024-05-01T10:00:00+02:00', flag: yes, "
                            "day: 2024-05-01}")
    assert isinstance(values["at"], datetime) and isinstance(values["day"], date)
    tz = col(sa.DateTime(timezone=True))
    assert marker_value(tz, values["at"], MOMENT) == datetime(2024, 5, 1, 10, tzinfo=UTC)
    assert marker_value(tz, values["quoted"], MOMENT) == datetime(2024, 5, 1, 8, tzinfo=UTC)
    assert marker_value(col(sa.Boolean()), values["flag"], MOMENT) is True
    assert marker_value(col(sa.Date()), values["day"], MOMENT) == date(2024, 5, 1)
    assert marker_value(col(sa.DateTime()), values["day"], MOMENT) == datetime(2024, 5, 1)
    assert marker_value(col(sa.String(10)), None, MOMENT) is None
    # a receipt gets JSON, never a datetime
    assert marker_text(values) == {"at": "2024-05-01T10:00:00+00:00", "quoted": "2024-05-01T10:00:00+02:00",
                                   "flag": True, "day": "2024-05-01"}


def test_carries_compares_in_the_column_type() -> None:
    """The timestamptz defect: a quoted marker was bound as varchar; now it is a datetime parameter."""
    table = sa.Table("t", sa.MetaData(), sa.Column("at", postgresql.TIMESTAMP(timezone=True)),
                     sa.Column("flag", sa.Boolean()))
    clause = carries(table.c.at, "2024-05-01T10:00:00+02:00")
    params = clause.compile(dialect=postgresql.dialect()).params
    assert list(params.values()) == [datetime(2024, 5, 1, 8, tzinfo=UTC)]
    flag = carries(table.c.flag, "yes").compile(dialect=postgresql.dialect(), compile_kwargs={"literal_binds": True})
    assert "t.flag = true" in str(flag)
    assert str(carries(table.c.at, NOW)) == "t.at IS NOT NULL"
    assert str(carries(table.c.at, None)) == "t.at IS NULL"


@pytest.mark.parametrize(("type_", "value"), [
    (sa.DateTime(timezone=True), "soon"), (sa.Boolean(), "maybe"), (sa.Boolean(), NOW), (sa.Integer(), TODAY),
    (sa.Date(), datetime(2024, 1, 1, 10)), (postgresql.JSONB(), {"restricted": True}),
    (Opaque("point"), "(0,0)"), (postgresql.MONEY(), 1),
])
def test_markers_that_cannot_be_written_or_compared_are_refused(type_: Any, value: Any) -> None:
    problem = marker_problem(col(type_), value)
    assert problem and "\n" not in problem


def test_lifting_to_null_needs_a_nullable_column() -> None:
    assert marker_problem(col(sa.Boolean()), None) is None
    assert "NOT NULL" in (marker_problem(col(sa.Boolean(), nullable=False), None) or "")
    for type_, value in ((sa.Boolean(), "no"), (sa.String(20), "restricted"), (sa.Date(), TODAY),
                         (mysql.TINYINT(display_width=1), True), (sa.DateTime(timezone=True), NOW)):
        assert marker_problem(col(type_), value) is None
