"""Retention rules (issue 19): the period arithmetic, the due boundary, and what the data map accepts."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest

from connectors.base import PermanentError
from connectors.retention import Period, cutoff_moment, is_due, render, rule_note
from connectors.sql_map import parse_system
from discovery.i18n.languages import language


@pytest.mark.parametrize("text", ["5 years", "24 months", "30 days", "2 weeks", "1 year", "1y", "6mo"])
def test_periods_people_write(text: str) -> None:
    assert Period.parse(text).count >= 1


@pytest.mark.parametrize("text", ["", "five years", "0 days", "5 fortnights", "-1 year", "5"])
def test_what_is_not_a_period(text: str) -> None:
    with pytest.raises(ValueError, match="not a period"):
        Period.parse(text)


def test_calendar_arithmetic() -> None:
    assert Period.parse("1 year").add(date(2024, 2, 29)) == date(2025, 2, 28)
    assert Period.parse("4 years").add(date(2024, 2, 29)) == date(2028, 2, 29)
    assert Period.parse("1 month").add(date(2024, 1, 31)) == date(2024, 2, 29)
    assert Period.parse("24 months").add(date(2023, 3, 31)) == date(2025, 3, 31)


@pytest.mark.parametrize("period", ["1 year", "5 years", "1 month", "24 months", "30 days", "2 weeks"])
def test_the_sql_cutoff_agrees_with_the_definition_on_every_day(period: str) -> None:
    """`from < cutoff(today)` (what SQL runs) is the same as `from + period < today` for every pair of days over
    eight years, leap days included."""
    p = Period.parse(period)
    start = date(2019, 12, 1)
    for t in range(0, 366 * 3, 7):
        today = date(2027, 1, 1) + timedelta(days=t)
        now = datetime(today.year, today.month, today.day, 15, tzinfo=UTC)
        cut = cutoff_moment(p, now).date()
        for d in range(0, 366 * 8, 3):
            day = start + timedelta(days=d)
            assert (day < cut) == is_due(day, p, now) == (p.add(day) < today), (period, today, day)


def test_the_leap_day_boundary() -> None:
    p = Period.parse("1 year")
    assert not is_due(date(2024, 2, 29), p, datetime(2025, 2, 28, 23, 59, tzinfo=UTC))
    assert is_due(date(2024, 2, 29), p, datetime(2025, 3, 1, tzinfo=UTC))
    # 28 February 2027 + 1 year is 28 February 2028, before the leap day: due on 29 February
    assert is_due(date(2027, 2, 28), p, datetime(2028, 2, 29, tzinfo=UTC))


def _system(**retention: Any) -> dict[str, Any]:
    return {"kind": "sql", "url_env": "X", "entities": {
        "users": {"table": "users", "identities": {"email": "email"}, "fields": {"last": "usage"},
                  "erase": {"strategy": "mask", "mask": {"email": "hash"}}},
        "orders": {"table": "orders", "references": {"user_id": "users.id"}, "fields": {"at": "billing"},
                   "erase": {"strategy": "delete"}, "retention": {"reason": "kept for the books", **retention}}}}


@pytest.mark.parametrize(("retention", "message"), [
    ({"after": "5 eons", "from": "at"}, "not a period"),
    ({"after": "5 years"}, "from"),
    ({"after": "5 years", "from": "at", "then": "burn"}, "then"),
    ({"after": "5 years", "from": "at", "then": "anonymise"}, "needs a 'mask'"),
    ({"after": "5 years", "from": "at", "mask": {"x": "null"}}, "only allowed with then: anonymise"),
    ({"after": "5 years", "from": "invoices.date"}, "does not reference as its owner"),
    ({"after": "5 years", "from": "at", "unless": ["hold", "hold"]}, "at most once"),
    ({"after": "5 years", "from": "at", "unless": ["weather"]}, "unless"),
    ({"after": "5 years", "from": "at", "reason": "x"}, "in words"),
    ({"after": "5 years", "from": "at", "extra": 1}, "extra"),
])
def test_the_data_map_refuses_a_bad_rule(retention: dict[str, Any], message: str) -> None:
    with pytest.raises(PermanentError, match=message):
        parse_system("shop", _system(**retention))


def test_a_notice_rule_is_the_inactivity_sweeps() -> None:
    settings = _system(after="5 years", **{"from": "at"})
    settings["entities"]["users"]["retention"] = {"after": "24 months", "from": "last", "then": "notice",
                                                 "reason": "inactive accounts"}
    spec = parse_system("shop", settings)
    assert spec.inactivity is not None and (spec.inactivity.entity, spec.inactivity.last_activity) == ("users", "last")
    settings["inactivity"] = {"entity": "users", "last_activity": "other"}
    with pytest.raises(PermanentError, match="disagree"):
        parse_system("shop", settings)
    settings.pop("inactivity")
    settings["entities"]["users"]["retention"]["after"] = "30 days"
    with pytest.raises(PermanentError, match="months or years"):
        parse_system("shop", settings)


def test_a_rule_reads_in_each_language() -> None:
    spec = parse_system("shop", _system(after="5 years", reason={"en": "the books", "nb": "regnskapet"},
                                        **{"from": "at"}))
    text = rule_note("orders", spec.entities["orders"].retention)  # type: ignore[arg-type]
    assert render(text) == "orders: erased 5 years after at (the books)"
    assert render(text, language("nb").gettext, "nb") == "orders: slettes 5 år etter at (regnskapet)"
