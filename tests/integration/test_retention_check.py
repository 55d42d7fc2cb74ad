"""Issue 19 point 1: `dsar check` validates a SQL entity's retention rule against the live schema, on PostgreSQL
and MariaDB: the date columns exist and hold dates or timestamps (a warning when unindexed), and a `then:
anonymise` rule's own masks fit their columns as erase.mask's must (the type, NOT NULL, unique, what the
database would store). The schema and its faults are tests/integration/test_sql_check.py's, known beforehand."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.integration.test_sql_check import about, changed, checked, database, one_line_each

pytestmark = pytest.mark.integration
__all__ = ["database"]  # the fixture, used by name

REASON = {"en": "kept two years", "nb": "lagres to år"}


def retention(**rule: Any) -> dict[str, Any]:
    return {"retention": {"after": "2 years", "reason": REASON, **rule}}


def test_a_date_and_a_timestamp_column_pass(database: tuple[str, Callable[[], str]]) -> None:
    for column in ("born", "restricted_at"):
        with checked(database, changed(customers=retention(**{"from": column}))) as (health, _):
            assert health.problems == [], (column, health.problems)
            # neither column is indexed: each run would read the whole table
            assert any(f"retention column customers.{column} has no index" in w for w in health.warnings)


def test_an_indexed_date_has_no_warning(database: tuple[str, Callable[[], str]]) -> None:
    with checked(database, changed(customers=retention(**{"from": "born"})),
                 extra=";CREATE INDEX ix_customers_born ON customers (born)") as (health, _):
        assert health.problems == [] and not [w for w in health.warnings if "retention column" in w]


def test_a_missing_column_and_a_text_date_are_problems(database: tuple[str, Callable[[], str]]) -> None:
    with checked(database, changed(customers=retention(**{"from": "closed_on"}))) as (health, _):
        assert about(health, "entity customers: retention column 'closed_on' does not exist in table customers")
        assert not health.ok
    with checked(database, changed(customers=retention(**{"from": "born", "fallback": "code"}))) as (health, _):
        found = about(health, "entity customers: retention column customers.code is ")
        assert len(found) == 1 and found[0].endswith("not a date or timestamp"), health.problems
        one_line_each(health)


def test_a_parents_date_is_checked_in_the_parent(database: tuple[str, Callable[[], str]]) -> None:
    ok = changed(orders=retention(**{"from": "customers.born"}))
    with checked(database, ok) as (health, _):
        assert health.problems == [], health.problems
    bad = changed(orders=retention(**{"from": "customers.phone"}))
    with checked(database, bad) as (health, _):
        assert len(about(health, "entity orders: retention column customers.phone is ")) == 1, health.problems


def test_an_anonymise_rules_own_masks_are_checked(database: tuple[str, Callable[[], str]]) -> None:
    masks = {"code": {"fixed": "toolong"},  # varchar(3)
             "score": "null",  # NOT NULL
             "token": "redact",  # unique (below): one value for every row
             "name": "redact"}  # fine
    entities = changed(customers=retention(**{"from": "born", "then": "anonymise", "mask": masks}))
    with checked(database, entities, extra=";CREATE UNIQUE INDEX ux_customers_token ON customers (token)") \
            as (health, _):
        for what in ("retention.mask customers.code (fixed 'toolong'): ", "retention.mask customers.score (null): ",
                     "retention.mask customers.token (redact): "):
            assert len(about(health, f"entity customers: {what}")) == 1, (what, health.problems)
        assert not about(health, "retention.mask customers.name")
        assert len([p for p in health.problems if "retention.mask" in p]) == 3, health.problems
        assert not health.ok
        one_line_each(health)


def test_an_anonymise_rule_without_its_own_mask_adds_nothing(database: tuple[str, Callable[[], str]]) -> None:
    """It writes erase.mask, which the check already covers: no second report of the same value."""
    entities = changed(customers=retention(**{"from": "born", "then": "anonymise"}))
    with checked(database, entities) as (health, _):
        assert health.problems == [] and not [p for p in health.problems if "retention.mask" in p]
