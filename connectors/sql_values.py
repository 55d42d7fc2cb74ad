"""Values in and out of SQL columns: how each column type is exported, masked and marked.

One representation per type, for every engine the SQL connector runs on (docs/datamap.md,
"Column types"). Everything that turns a database value into JSON, or a data-map value (a mask,
a restriction marker) into a column value, lives here, so `dsar check` can try the same code.
"""

from __future__ import annotations

import hashlib
import hmac
import uuid
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa

REDACTED = "[redacted]"
# marker words in restrict/lift/hold `set` values: the moment of the action, or its day
NOW, TODAY = "now", "today"


def jsonable(value: Any, column: sa.Column[Any] | None = None) -> Any:
    """A column value as JSON (the export's representation of its type); `column` tells ambiguous
    Python values apart (a timedelta is a PostgreSQL interval or a MariaDB TIME)."""
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, bytes | memoryview):
        return bytes(value).hex()
    if isinstance(value, uuid.UUID):
        return str(value)
    return value


def mask_value(column: sa.Column[Any], method: Any, *, row: str, secret_key: bytes) -> Any:
    """The value that replaces `column` of the row keyed `row` (`{table}:{primary key}`) under a mask method:
    'null', 'redact', 'hash', or a Fixed value."""
    fixed = getattr(method, "fixed", _NOTHING)
    if fixed is not _NOTHING:
        return fixed
    if method == "null":
        return None
    if method == "redact":
        return REDACTED
    # Keyed by row and column, not by the old value, so masking twice gives the same result
    # and the value cannot be reversed by hashing guesses.
    digest = hmac.new(secret_key, f"{row}:{column.name}".encode(), hashlib.sha256)
    value = f"erased-{digest.hexdigest()[:24]}"
    length = getattr(column.type, "length", None)
    return value[:length] if length else value


_NOTHING = object()


def marker_value(column: sa.Column[Any], value: Any, now: datetime) -> Any:
    """A restrict/lift/hold `set` value as written to `column` ('now' and 'today' are the action's time)."""
    if value == NOW:
        return bound_for(column, now)
    if value == TODAY:
        return now.date()
    return value


def carries(column: sa.Column[Any], value: Any) -> sa.ColumnElement[bool]:
    """Rows whose `column` already holds the marker `value` (a time marker: any time at all)."""
    if value is None or value in (NOW, TODAY):
        return column.is_(None) if value is None else column.is_not(None)
    return sa.func.coalesce(column == value, sa.false())


def mask_problem(column: sa.Column[Any], method: Any) -> str | None:
    """Why `method` cannot mask `column` (its value could not be stored there), or None. For `dsar check`."""
    return None


def marker_problem(column: sa.Column[Any], value: Any) -> str | None:
    """Why the `set` value cannot be written to `column`, or None. For `dsar check`."""
    return None


def same(current: Any, new: Any) -> bool:
    return current == new or (current is not None and new is not None and str(current) == str(new))


def python_type(col: sa.Column[Any]) -> type | None:
    try:
        return col.type.python_type  # type: ignore[no-any-return]
    except NotImplementedError:
        return None


def bound_for(col: sa.Column[Any], moment: datetime) -> date | datetime:
    """`moment` in the column's own type: a date, a naive UTC datetime, or an aware one."""
    kind = python_type(col)
    if kind is date:
        return moment.date()
    if kind is datetime and not getattr(col.type, "timezone", False):
        return moment.astimezone(UTC).replace(tzinfo=None)
    return moment


def as_datetime(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=UTC)
    return datetime.fromisoformat(str(value)).replace(tzinfo=UTC)
