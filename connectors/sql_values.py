"""Values in and out of SQL columns: how each column type is exported, masked and marked.

One representation per type, for every engine the SQL connector runs on (docs/datamap.md,
"Column types"). Everything that turns a database value into JSON, or a data-map value (a mask,
a restriction marker) into a column value, lives here, so `dsar check` can try the same code:
`mask_problem` and `marker_problem` refuse, before any request runs, what `mask_value` and
`marker_value` could not store.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import math
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import mysql, postgresql
from sqlalchemy.dialects.postgresql import Range

REDACTED = "[redacted]"
# marker words in restrict/lift/hold `set` values: the moment of the action, or its day
NOW, TODAY = "now", "today"
BASE64 = "base64"  # bytes are exported as {"base64": "..."}: a text column could hold any string


class ValueProblem(ValueError):
    """A data-map value that cannot be stored in its column; the message is one line, without row data."""


# -- what a column is -----------------------------------------------------------------------

class Opaque(sa.types.UserDefinedType[str]):
    """A PostgreSQL type SQLAlchemy does not know (point, polygon, xml ...), named so that bound values are
    cast to it and masks can tell xml (text) from geometry. Values travel as the database's text."""

    cache_ok = True

    def __init__(self, name: str) -> None:
        self.name = name

    def get_col_spec(self, **_kw: Any) -> str:
        return self.name


class Duration(mysql.TIME):
    """MariaDB/MySQL TIME is a duration (-838:59:59 to 838:59:59); SQLAlchemy's TIME folds it into a time of
    day and loses the sign and days. This keeps the driver's timedelta."""

    cache_ok = True

    def result_processor(self, dialect: Any, coltype: object) -> None:  # type: ignore[override]
        return None


GEOMETRIC = frozenset({"point", "line", "lseg", "box", "path", "polygon", "circle"})
# half the span of each integer type (MariaDB's UNSIGNED ones hold 0 to twice that)
_INT_RANGES: tuple[tuple[type, int], ...] = ((mysql.TINYINT, 2**7), (sa.SmallInteger, 2**15),
                                             (mysql.MEDIUMINT, 2**23), (sa.BigInteger, 2**63), (sa.Integer, 2**31))


def kind(column: sa.Column[Any]) -> str:
    """The column's type as one of the families this module knows."""
    return _kind(column.type)


def _kind(t: Any) -> str:
    if isinstance(t, sa.ARRAY):
        return "array"
    if isinstance(t, mysql.SET):
        return "set"
    if isinstance(t, sa.Enum):
        return "enum"
    if isinstance(t, sa.JSON):
        return "json"
    if isinstance(t, postgresql.BIT | mysql.BIT):
        return "bit"
    if isinstance(t, mysql.YEAR):
        return "year"
    if isinstance(t, sa.Boolean):
        return "bool"
    if isinstance(t, sa.Integer):
        return "int"
    if isinstance(t, postgresql.MONEY):
        return "money"
    if isinstance(t, sa.Float):
        return "float"
    if isinstance(t, sa.Numeric):
        return "numeric"
    if isinstance(t, sa.DateTime):
        return "datetime"
    if isinstance(t, sa.Date):
        return "date"
    if isinstance(t, mysql.TIME):
        return "duration"  # MariaDB/MySQL TIME: elapsed time, not a time of day
    if isinstance(t, sa.Time):
        return "time"
    if isinstance(t, postgresql.INTERVAL | sa.Interval):
        return "interval"
    if isinstance(t, sa.Uuid):
        return "uuid"
    if isinstance(t, sa.LargeBinary | sa.BINARY | sa.VARBINARY | postgresql.BYTEA):
        return "bytes"
    if isinstance(t, postgresql.INET):
        return "inet"
    if isinstance(t, postgresql.CIDR):
        return "cidr"
    if isinstance(t, postgresql.MACADDR | postgresql.MACADDR8):
        return "mac"
    if isinstance(t, postgresql.TSVECTOR):
        return "tsvector"
    if isinstance(t, postgresql.ranges.AbstractMultiRange):
        return "multirange"
    if isinstance(t, postgresql.ranges.AbstractSingleRange):
        return "range"
    if isinstance(t, Opaque):
        return "xml" if t.name == "xml" else "geometric" if t.name in GEOMETRIC else "other"
    if isinstance(t, sa.String):
        return "text"
    return "other"


def _type_name(column: sa.Column[Any]) -> str:
    try:
        return str(column.type.compile())
    except Exception:  # a type without a generic spelling: its class name will do
        return type(column.type).__name__


# -- export ---------------------------------------------------------------------------------

def jsonable(value: Any, column: sa.Column[Any] | None = None) -> Any:
    """A column value as JSON (the export's representation of its type); `column` tells ambiguous
    Python values apart (a timedelta is a PostgreSQL interval or a MariaDB TIME)."""
    return _json(value, column.type if column is not None else None)


def _json(value: Any, t: Any) -> Any:
    family = _kind(t) if t is not None else "other"
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):  # a str subclass (a bit string) as plain text
        return _money(value) if family == "money" else str(value)
    if isinstance(value, int):
        if family == "bit":  # MariaDB BIT(n) arrives as an integer: show its n bits
            return format(value, f"0{getattr(t, 'length', None) or 1}b")
        return value
    if isinstance(value, float | Decimal) and family == "float":
        number = float(value)
        return number if math.isfinite(number) else str(value).replace("inf", "Infinity").replace("nan", "NaN")
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value).replace("inf", "Infinity").replace("nan", "NaN")
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime):
        # aware values in UTC: the same instant reads the same whatever the session's time zone
        return (value.astimezone(UTC) if value.tzinfo else value).isoformat()
    if isinstance(value, date | time):
        return value.isoformat()
    if isinstance(value, timedelta):
        return _clock(value) if family == "duration" else iso_duration(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return {BASE64: base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, Range):
        return _range(value)
    if isinstance(value, set | frozenset):
        order = {v: i for i, v in enumerate(getattr(t, "values", None) or ())}
        return sorted((str(v) for v in value), key=lambda v: (order.get(v, len(order)), v))
    if isinstance(value, dict):
        return value if family == "json" else {str(k): _json(v, None) for k, v in value.items()}
    if isinstance(value, list | tuple):
        if family == "json":
            return value
        item = getattr(t, "item_type", None)
        return [_json(v, item) for v in value]
    return str(value)  # UUID, addresses, bit strings, and anything a driver may add: their text


def _range(value: Range[Any]) -> dict[str, Any]:
    if value.empty:
        return {"lower": None, "upper": None, "bounds": None, "empty": True}
    return {"lower": _json(value.lower, None), "upper": _json(value.upper, None), "bounds": value.bounds,
            "empty": False}


_MONEY = re.compile(r"^(-?)\$?([\d,]+(?:\.\d+)?)$")


def _money(text: str) -> str:
    """PostgreSQL money arrives formatted for lc_monetary ('-$1,234.50' under C and en_US): as a plain decimal."""
    found = _MONEY.match(text.strip())
    return f"{found.group(1)}{found.group(2).replace(',', '')}" if found else text


def iso_duration(value: timedelta) -> str:
    """ISO 8601 duration, e.g. P428DT4H5M6.5S; a negative one is -P...; zero is PT0S."""
    sign, value = ("-", -value) if value < timedelta(0) else ("", value)
    hours, rest = divmod(value.seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    secs = f"{seconds}.{value.microseconds:06d}".rstrip("0").rstrip(".") if value.microseconds else str(seconds)
    clock = "".join(f"{n}{u}" for n, u in ((hours, "H"), (minutes, "M")) if n) + (f"{secs}S" if secs != "0" else "")
    body = (f"{value.days}D" if value.days else "") + (f"T{clock}" if clock else "")
    return f"{sign}P{body or 'T0S'}"


def _clock(value: timedelta) -> str:
    """MariaDB TIME as the database writes it: [-]HH:MM:SS[.ffffff], hours up to 838."""
    sign, value = ("-", -value) if value < timedelta(0) else ("", value)
    minutes, seconds = divmod(value.days * 86400 + value.seconds, 60)
    hours, minutes = divmod(minutes, 60)
    frac = f".{value.microseconds:06d}" if value.microseconds else ""
    return f"{sign}{hours:02d}:{minutes:02d}:{seconds:02d}{frac}"


_DURATION = re.compile(r"^(-)?P(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+(?:\.\d+)?)S)?)?$")
_CLOCK = re.compile(r"^(-)?(\d+):(\d\d)(?::(\d\d(?:\.\d+)?))?$")


def parse_duration(text: str) -> timedelta:
    """ISO 8601 days-and-time durations (P1DT2H, PT30M; no months or years: their length varies) or [-]HH:MM[:SS]."""
    iso, clock = _DURATION.match(text), _CLOCK.match(text)
    if iso and text not in ("P", "-P") and not text.endswith("T"):
        sign, d, h, m, s = iso.groups()
        out = timedelta(days=int(d or 0), hours=int(h or 0), minutes=int(m or 0), seconds=float(s or 0))
    elif clock:
        sign, h, m, s = clock.groups()
        out = timedelta(hours=int(h), minutes=int(m), seconds=float(s or 0))
    else:
        raise ValueProblem(f"{text!r} is not a duration (ISO 8601 like PT1H30M, or HH:MM:SS)")
    return -out if sign else out


# -- data-map values into a column -----------------------------------------------------------

def cast(column: sa.Column[Any], value: Any) -> Any:
    """A data-map value (YAML: text, number, boolean, date, datetime, list, mapping) as `column` stores it;
    ValueProblem when it cannot be."""
    return _cast(column.type, value)


_TRUE, _FALSE = {"true", "yes", "on", "1"}, {"false", "no", "off", "0"}


def _cast(t: Any, value: Any) -> Any:
    if value is None:
        return None
    family = _kind(t)
    if family in ("text", "xml", "tsvector", "geometric", "other"):
        if isinstance(value, dict | list | bytes):
            raise ValueProblem(f"{_what(value)} is not text")
        text = _text(value)
        length = getattr(t, "length", None)
        if family == "text" and length and len(text) > length:
            raise ValueProblem(f"{text!r} is longer than the column's {length} characters")
        return text
    if family == "bool":
        if isinstance(value, bool):
            return value
        word = str(value).strip().lower() if isinstance(value, str | int) else ""
        if word in _TRUE | _FALSE:
            return word in _TRUE
        raise ValueProblem(f"{_what(value)} is not a boolean (true/false, yes/no, on/off, 1/0)")
    if family in ("int", "year"):
        if getattr(t, "display_width", None) == 1 and isinstance(value, str) \
                and value.strip().lower() in _TRUE | _FALSE:  # MariaDB BOOLEAN is TINYINT(1)
            return int(value.strip().lower() in _TRUE)
        number = _integer(value)
        if family == "year" and not (number == 0 or 1901 <= number <= 2155):
            raise ValueProblem(f"{number} is not a year from 1901 to 2155")
        bound = next((b for kind_, b in _INT_RANGES if isinstance(t, kind_)), None)
        low, high = (0, 2 * bound) if bound and getattr(t, "unsigned", False) else (-(bound or 0), bound or 0)
        if bound and not low <= number < high:
            raise ValueProblem(f"{number} is out of the column's range")
        return number
    if family in ("numeric", "money"):
        return _decimal(t, value)
    if family == "float":
        if isinstance(value, bool) or not isinstance(value, int | float | Decimal | str):
            raise ValueProblem(f"{_what(value)} is not a number")
        try:
            return float(value)
        except ValueError:
            raise ValueProblem(f"{value!r} is not a number") from None
    if family == "datetime":
        return _datetime(value, aware=bool(getattr(t, "timezone", False)))
    if family == "date":
        return _date(value)
    if family == "time":
        moment = value if isinstance(value, time) else _parse(time.fromisoformat, value, "a time of day (HH:MM:SS)")
        if getattr(t, "timezone", False):
            return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
        return moment.replace(tzinfo=None)
    if family in ("interval", "duration"):
        if isinstance(value, timedelta):
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            return timedelta(seconds=value)
        if isinstance(value, str):
            return parse_duration(value.strip())
        raise ValueProblem(f"{_what(value)} is not a duration")
    if family == "uuid":
        return value if isinstance(value, uuid.UUID) else _parse(uuid.UUID, value, "a UUID")
    if family == "bytes":
        data = _bytes(value)
        length = getattr(t, "length", None)
        if length and len(data) > length:
            raise ValueProblem(f"{len(data)} bytes do not fit the column's {length}")
        return data
    if family == "json":
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError):
            raise ValueProblem(f"{_what(value)} is not a JSON value (a date must be written as text)") from None
        return value
    if family == "enum":
        labels = list(getattr(t, "enums", None) or ())
        if _text(value) not in labels:
            raise ValueProblem(f"{value!r} is not one of the column's labels ({', '.join(labels)})")
        return _text(value)
    if family == "set":
        members = value.split(",") if isinstance(value, str) else value
        if not isinstance(members, list | tuple | set) or not all(isinstance(m, str) for m in members):
            raise ValueProblem(f"{_what(value)} is not a list of the column's members")
        chosen = {m.strip() for m in members if m.strip()}
        allowed = set(getattr(t, "values", None) or ())
        unknown = sorted(chosen - allowed)
        if unknown:
            raise ValueProblem(f"{', '.join(unknown)} not among the column's members ({', '.join(sorted(allowed))})")
        return chosen
    if family == "bit":
        return _bits(t, value)
    if family in ("inet", "cidr"):
        try:
            if family == "cidr":
                return ipaddress.ip_network(str(value))
            return ipaddress.ip_interface(str(value)) if "/" in str(value) else ipaddress.ip_address(str(value))
        except ValueError:
            raise ValueProblem(f"{value!r} is not an IP {'network' if family == 'cidr' else 'address'}") from None
    if family == "mac":
        if not isinstance(value, str) or not re.fullmatch(r"[0-9A-Fa-f]{2}([:-][0-9A-Fa-f]{2}){5,7}", value):
            raise ValueProblem(f"{value!r} is not a MAC address (08:00:2b:01:02:03)")
        return value
    if family == "array":
        if not isinstance(value, list | tuple):
            raise ValueProblem(f"{_what(value)} is not a list")
        item = getattr(t, "item_type", None)
        return [_cast(t, v) if isinstance(v, list | tuple) else _cast(item, v) for v in value]
    if family == "range":
        return _range_value(t, value)
    if family == "multirange":
        if not isinstance(value, list | tuple):
            raise ValueProblem(f"{_what(value)} is not a list of ranges")
        return postgresql.MultiRange(_range_value(t, v) for v in value)
    raise ValueProblem(f"no value can be written to a column of type {type(t).__name__}")


def _what(value: Any) -> str:
    return f"{type(value).__name__} {value!r}"[:120]


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        return (value.astimezone(UTC) if value.tzinfo else value).isoformat()
    return value.isoformat() if isinstance(value, date | time) else str(value)


def _parse(parse: Any, value: Any, what: str) -> Any:
    if not isinstance(value, str):
        raise ValueProblem(f"{_what(value)} is not {what}")
    try:
        return parse(value.strip())
    except ValueError:
        raise ValueProblem(f"{value!r} is not {what}") from None


def _integer(value: Any) -> int:
    if isinstance(value, bool):  # a flag in an integer column (MariaDB BOOLEAN is TINYINT(1))
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float | Decimal) and math.isfinite(value) and value == int(value):
        return int(value)
    if isinstance(value, str) and re.fullmatch(r"\s*-?\d+\s*", value):
        return int(value)
    raise ValueProblem(f"{_what(value)} is not a whole number")


def _decimal(t: Any, value: Any) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal | str):
        raise ValueProblem(f"{_what(value)} is not a number")
    try:
        number = Decimal(str(value).strip())
    except InvalidOperation:
        raise ValueProblem(f"{value!r} is not a number") from None
    precision, scale = getattr(t, "precision", None), getattr(t, "scale", None) or 0
    if not number.is_finite() or (precision and number.adjusted() + 1 > precision - scale):
        raise ValueProblem(f"{value!r} does not fit the column's precision")
    return number


def _datetime(value: Any, *, aware: bool) -> datetime:
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, date):
        moment = datetime(value.year, value.month, value.day)
    else:
        moment = _parse(datetime.fromisoformat, value, "a date and time (ISO 8601)")
    if aware:  # a time without an offset is UTC, as everywhere in dsar
        return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).replace(tzinfo=None) if moment.tzinfo else moment


def _date(value: Any) -> date:
    if isinstance(value, datetime):
        if value.timetz().replace(tzinfo=None) != time(0):
            raise ValueProblem(f"{value.isoformat()} has a time of day; the column holds a date")
        return value.date()
    if isinstance(value, date):
        return value
    return _parse(date.fromisoformat, value, "a date (YYYY-MM-DD)")  # type: ignore[no-any-return]


def _bytes(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, dict) and set(value) == {BASE64}:  # the export's own form
        try:
            return base64.b64decode(str(value[BASE64]), validate=True)
        except ValueError:
            raise ValueProblem("the base64 text does not decode") from None
    if isinstance(value, str):
        return value.encode()
    raise ValueProblem(f"{_what(value)} is neither text nor {{base64: ...}}")


def _bits(t: Any, value: Any) -> Any:
    length = getattr(t, "length", None) or 1
    if isinstance(value, int) and not isinstance(value, bool):
        bits = format(value, "b") if value >= 0 else ""
    else:
        bits = str(value) if isinstance(value, str) else ""
    if not bits or set(bits) - {"0", "1"}:
        raise ValueProblem(f"{_what(value)} is not a bit string (like 0101)")
    if isinstance(t, mysql.BIT):
        if len(bits.lstrip("0")) > length:
            raise ValueProblem(f"{bits} has more than the column's {length} bits")
        return int(bits, 2)
    if len(bits) > length or (not getattr(t, "varying", False) and len(bits) != length):
        raise ValueProblem(f"{bits} is not {'at most ' if getattr(t, 'varying', False) else ''}{length} bits")
    return postgresql.BitString(bits)


_RANGE_OF = {"INT4RANGE": sa.Integer(), "INT8RANGE": sa.BigInteger(), "NUMRANGE": sa.Numeric(),
             "DATERANGE": sa.Date(), "TSRANGE": sa.DateTime(), "TSTZRANGE": sa.DateTime(timezone=True)}


def _range_value(t: Any, value: Any) -> Range[Any]:
    if value == "empty":
        return Range(empty=True)
    if not isinstance(value, dict) or not set(value) <= {"lower", "upper", "bounds", "empty"}:
        raise ValueProblem(f"{_what(value)} is not a range ({{lower: .., upper: .., bounds: '[)'}} or 'empty')")
    if value.get("empty"):
        return Range(empty=True)
    bounds: Any = value.get("bounds") or "[)"
    if bounds not in ("[)", "(]", "[]", "()"):
        raise ValueProblem(f"bounds {bounds!r} must be one of [) (] [] ()")
    name = type(t).__name__.replace("MULTIRANGE", "RANGE")
    item = _RANGE_OF.get(name, sa.String())
    return Range(_cast(item, value.get("lower")), _cast(item, value.get("upper")), bounds=bounds)


# -- erasure: masks -------------------------------------------------------------------------

# redact and hash store text; these families hold text (JSON as a JSON string, tsvector as one word)
_TEXTUAL = frozenset({"text", "xml", "json", "tsvector"})
_INSTEAD = {
    "enum": "null or {fixed: <one of its labels>}",
    "set": "null or {fixed: []}",
    "array": "null or {fixed: []}",
    "inet": "null or {fixed: 0.0.0.0}",
    "cidr": "null or {fixed: 0.0.0.0/32}",
    "mac": "null or {fixed: '00:00:00:00:00:00'}",
    "bool": "null or {fixed: false}",
}


def mask_value(column: sa.Column[Any], method: Any, *, row: str, secret_key: bytes) -> Any:
    """The value that replaces `column` of the row keyed `row` (`{table}:{primary key}`) under a mask method:
    'null', 'redact', 'hash', or a Fixed value. ValueProblem where `mask_problem` refuses the method."""
    fixed = getattr(method, "fixed", _NOTHING)
    if fixed is not _NOTHING:
        return cast(column, fixed)
    if method == "null":
        return None
    problem = mask_problem(column, method)
    if problem:
        raise ValueProblem(problem)
    family = kind(column)
    if method == "redact":
        return REDACTED.encode() if family == "bytes" else _lexeme(family, REDACTED)
    # Keyed by row and column, not by the old value, so masking twice gives the same result
    # and the value cannot be reversed by hashing guesses.
    digest = hmac.new(secret_key, f"{row}:{column.name}".encode(), hashlib.sha256).digest()
    length = getattr(column.type, "length", None)
    if family == "uuid":
        return uuid.UUID(bytes=digest[:16], version=4)
    if family == "bytes":
        return digest[:length] if length else digest
    value = f"erased-{digest.hex()[:24]}"
    if length and length < len(value):  # a short column keeps as many distinct characters as it can
        value = value[:length] if length >= 15 else digest.hex()[:length]
    return _lexeme(family, value)


def _lexeme(family: str, text: str) -> str:
    """A tsvector holds words: the masked text as one quoted word, as the database writes it back."""
    return f"'{text}'" if family == "tsvector" else text


_NOTHING = object()


def mask_problem(column: sa.Column[Any], method: Any) -> str | None:
    """Why `method` cannot mask `column` (its value could not be stored there), or None. For `dsar check`."""
    fixed = getattr(method, "fixed", _NOTHING)
    name, family = column.name, kind(column)
    if fixed is not _NOTHING:
        try:
            cast(column, fixed)
        except ValueProblem as exc:
            return f"column {name} ({_type_name(column)}): cannot store the fixed value: {exc}"
        return None
    if method == "null":
        return None  # a NOT NULL column is refused by the schema check
    if method not in ("redact", "hash"):
        return f"column {name}: unknown mask method {method!r} (null, hash, redact or {{fixed: value}})"
    length = getattr(column.type, "length", None)
    if family in _TEXTUAL:
        if method == "redact" and length and length < len(REDACTED):
            return (f"column {name} holds at most {length} characters: '{REDACTED}' does not fit; "
                    "use hash or {fixed: value}")
        return None
    if family == "bytes":
        if method == "redact" and length and length < len(REDACTED):
            return f"column {name} holds at most {length} bytes: '{REDACTED}' does not fit; use hash or null"
        return None
    if family == "uuid" and method == "hash":
        return None  # a UUID derived from the keyed digest: unique columns stay unique
    instead = "null or {fixed: <value>}" if family != "uuid" else "hash, null or {fixed: <uuid>}"
    return (f"column {name} ({_type_name(column)}) cannot hold the text of '{method}'; "
            f"use {_INSTEAD.get(family, instead)}")


# -- restriction markers --------------------------------------------------------------------

_NO_EQUALITY = frozenset({"json", "range", "multirange", "geometric", "xml", "tsvector", "money", "other"})


def marker_value(column: sa.Column[Any], value: Any, now: datetime) -> Any:
    """A restrict/lift/hold `set` value as written to `column`: 'now' and 'today' are the action's time (UTC) in
    the column's type; any other value is cast to the column (ValueProblem where `marker_problem` refuses)."""
    family = kind(column)
    if value == NOW:
        if family == "time":
            return _cast(column.type, now.astimezone(UTC).time().isoformat())
        if family in ("datetime", "date"):
            return bound_for(column, now)
        if family == "text":
            return _cast(column.type, now.astimezone(UTC).isoformat())
        raise ValueProblem(f"column {column.name} ({_type_name(column)}) cannot hold the time '{NOW}'")
    if value == TODAY:
        day = now.astimezone(UTC).date()
        if family in ("datetime", "date", "text"):
            return _cast(column.type, day)
        raise ValueProblem(f"column {column.name} ({_type_name(column)}) cannot hold the date '{TODAY}'")
    try:
        return cast(column, value)
    except ValueProblem as exc:
        raise ValueProblem(f"column {column.name} ({_type_name(column)}): {exc}") from None


def carries(column: sa.Column[Any], value: Any) -> sa.ColumnElement[bool]:
    """Rows whose `column` already holds the marker `value` (a time marker: any time at all), compared in the
    column's own type (a text marker against a timestamptz column would compare timestamptz with varchar)."""
    if value is None or value in (NOW, TODAY):
        return column.is_(None) if value is None else column.is_not(None)
    return sa.func.coalesce(column == cast(column, value), sa.false())


def marker_problem(column: sa.Column[Any], value: Any) -> str | None:
    """Why the `set` value cannot be written to `column`, or None. For `dsar check`."""
    if value is None:
        return None if column.nullable else f"column {column.name} is NOT NULL: it cannot be set to null"
    family = kind(column)
    if value not in (NOW, TODAY) and family in _NO_EQUALITY:
        return (f"column {column.name} ({_type_name(column)}) cannot carry a marker: its values cannot be compared; "
                "use a boolean, text or timestamp column")
    try:
        marker_value(column, value, datetime.now(UTC))
    except ValueProblem as exc:
        return str(exc)
    return None


def marker_text(values: dict[str, Any]) -> dict[str, Any]:
    """A `set` mapping as JSON for a receipt (YAML may have made dates and datetimes of its values)."""
    return {column: _json(value, None) for column, value in values.items()}


# -- shared helpers -------------------------------------------------------------------------

def same(current: Any, new: Any) -> bool:
    """The stored value is already the masked one (a re-run leaves the row alone). CHAR pads with spaces
    (PostgreSQL keeps them, MariaDB drops them) and money comes back formatted: neither counts as a change."""
    if current == new:
        return True
    if current is None or new is None:
        return False
    if isinstance(current, str) and isinstance(new, Decimal):
        try:
            return Decimal(_money(current)) == new
        except InvalidOperation:
            return False
    return str(current).rstrip(" ") == str(new).rstrip(" ")


def python_type(col: sa.Column[Any]) -> type | None:
    try:
        return col.type.python_type  # type: ignore[no-any-return]
    except NotImplementedError:
        return None


def bound_for(col: sa.Column[Any], moment: datetime) -> date | datetime:
    """`moment` in the column's own type: a date, a naive UTC datetime, or an aware one."""
    family = kind(col)
    if family == "date":
        return moment.astimezone(UTC).date() if moment.tzinfo else moment.date()
    if family == "datetime" and not getattr(col.type, "timezone", False):
        return moment.astimezone(UTC).replace(tzinfo=None)
    return moment


def as_datetime(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=UTC)
    return datetime.fromisoformat(str(value)).replace(tzinfo=UTC)


# -- reflection -----------------------------------------------------------------------------

@sa.event.listens_for(sa.Table, "column_reflect")
def _reflect_column(inspector: Any, table: sa.Table, info: dict[str, Any]) -> None:
    """Give reflected columns the types their values need: MariaDB TIME as a duration, MariaDB JSON (LONGTEXT
    with a json_valid check, which SQLAlchemy reflects as plain text) as JSON, and PostgreSQL types SQLAlchemy
    does not know (geometry, xml) by name. Every reflected table gets this, so export, masks and markers see
    the same types wherever the table was loaded."""
    dialect, t = inspector.dialect, info["type"]
    if dialect.name in ("mysql", "mariadb"):
        if isinstance(t, mysql.TIME) and not isinstance(t, Duration):
            info["type"] = Duration(fsp=getattr(t, "fsp", None))
        elif isinstance(t, sa.String) and getattr(dialect, "is_mariadb", False) \
                and info["name"] in _json_checked(inspector, table):
            info["type"] = mysql.JSON()
    elif dialect.name == "postgresql" and isinstance(t, sa.types.NullType):
        name = _pg_type(inspector, table, info["name"])
        if name:
            info["type"] = Opaque(name)


@contextmanager
def _bind(inspector: Any) -> Iterator[Any]:
    bind = inspector.bind
    if isinstance(bind, sa.Engine):
        with bind.connect() as conn:
            yield conn
    else:
        yield bind


def _json_checked(inspector: Any, table: sa.Table) -> set[str]:
    key = ("dsar_json_columns", table.schema, table.name)
    cache = inspector.info_cache
    if key not in cache:
        query = sa.text("SELECT CHECK_CLAUSE FROM information_schema.CHECK_CONSTRAINTS "
                        "WHERE CONSTRAINT_SCHEMA = COALESCE(:schema, DATABASE()) AND TABLE_NAME = :table")
        found: set[str] = set()
        with _bind(inspector) as conn:
            for (clause,) in conn.execute(query, {"schema": table.schema, "table": table.name}):
                found |= set(re.findall(r"json_valid\(`((?:[^`]|``)+)`\)", str(clause)))
        cache[key] = {c.replace("``", "`") for c in found}
    return cache[key]  # type: ignore[no-any-return]


def _pg_type(inspector: Any, table: sa.Table, column: str) -> str | None:
    query = sa.text("SELECT format_type(a.atttypid, a.atttypmod) FROM pg_attribute a "
                    "JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
                    "WHERE c.relname = :table AND n.nspname = COALESCE(:schema, current_schema()) "
                    "AND a.attname = :column")
    with _bind(inspector) as conn:
        name = conn.execute(query, {"table": table.name, "schema": table.schema, "column": column}).scalar()
    return str(name) if name else None
