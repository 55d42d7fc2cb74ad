"""Issue 19: retention rules on PostgreSQL and MariaDB, and the legal-hold boundaries.

Rows are generated on both sides of each boundary (the day before a record's last day, its last day, the day
after; a leap day; time zones for timestamptz, naive timestamps and dates). Every expectation is written out
by hand from the rule in docs/retention.md (kept through the whole of day `from` + period, due from 00:00 UTC
of the next day), never computed by the code under test.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any

import pytest
import sqlalchemy as sa

from connectors.base import ConnectorContext, Identities, Identity, IdentityType
from connectors.retention import Keep
from connectors.sql import SqlConnector

pytestmark = pytest.mark.integration

SYSTEM = "shop"
URL_ENV = "DSAR_RETENTION_DB_URL"
OSLO = timezone(timedelta(hours=2))
WEST = timezone(timedelta(hours=-1))


def _schema(dialect: str) -> tuple[sa.MetaData, dict[str, sa.Table]]:
    md = sa.MetaData()
    stamp = sa.DateTime(timezone=True) if dialect == "postgresql" else sa.DateTime
    users = sa.Table("users", md, sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
                     sa.Column("email", sa.String(200)), sa.Column("processing_restricted", sa.Boolean, nullable=False,
                                                                   default=False))
    orders = sa.Table("orders", md, sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
                      sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id"), nullable=False),
                      sa.Column("ordered_on", sa.Date),  # the rule's date (a date column)
                      sa.Column("ordered_at", sa.DateTime),  # a naive timestamp (read as UTC)
                      sa.Column("ordered_tz", stamp),  # timestamptz on PostgreSQL
                      sa.Column("invoiced_on", sa.Date, nullable=False),  # the legal hold's date
                      sa.Column("processing_restricted", sa.Boolean, nullable=False, default=False))
    lines = sa.Table("order_lines", md, sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
                     sa.Column("order_id", sa.Integer, sa.ForeignKey("orders.id"), nullable=False),
                     sa.Column("product", sa.String(50)))
    return md, {"users": users, "orders": orders, "order_lines": lines}


def _map(from_column: str, then: str = "erase", hold_from: str = "invoiced_on") -> dict[str, Any]:
    return {"kind": "sql", "url_env": URL_ENV, "entities": {
        "users": {"table": "users", "identities": {"email": "email", "account_id": "id"},
                  "fields": {"email": "contact"}, "erase": {"strategy": "mask", "mask": {"email": "hash"}},
                  "restrict": {"set": {"processing_restricted": True}},
                  "lift": {"set": {"processing_restricted": False}}},
        "orders": {"table": "orders", "references": {"user_id": "users.id"},
                   "fields": {"ordered_on": "billing", "ordered_at": "billing", "ordered_tz": "billing",
                              "invoiced_on": "billing"},
                   "erase": {"strategy": "delete"}, "restrict": {"set": {"processing_restricted": True}},
                   "lift": {"set": {"processing_restricted": False}},
                   "hold": {"years": 5, "from": hold_from, "reason": "Bookkeeping Act: 5 years"},
                   "retention": {"after": "1 year", "from": from_column, "then": then,
                                 "reason": {"en": "orders are kept one year", "nb": "bestillinger lagres ett år"}}},
        "order_lines": {"table": "order_lines", "references": {"order_id": "orders.id"},
                        "fields": {"product": "billing"}, "erase": {"strategy": "delete"},
                        "hold": {"with": "orders"}},
    }}


@pytest.fixture(params=["postgresql", "mariadb"])
def db(request: pytest.FixtureRequest) -> Iterator[tuple[str, sa.Engine, dict[str, sa.Table]]]:
    factory: Callable[[], str] = request.getfixturevalue("pg_database" if request.param == "postgresql"
                                                         else "mariadb_database")
    url = factory()
    engine = sa.create_engine(url)
    md, tables = _schema(engine.dialect.name)
    md.create_all(engine)
    yield url, engine, tables
    engine.dispose()


def connector(url: str, column: str, now: datetime, then: str = "erase", hold_from: str = "invoiced_on"
              ) -> SqlConnector:
    ctx = ConnectorContext(env={URL_ENV: url}, secret_key=b"k", now=lambda: now)
    return SqlConnector.from_settings(SYSTEM, _map(column, then, hold_from), ctx)


OLD = date(2000, 1, 1)  # a hold that ended long ago


def seed(engine: sa.Engine, t: dict[str, sa.Table], orders: list[dict[str, Any]]) -> None:
    with engine.begin() as c:
        c.execute(t["users"].insert(), [{"id": 1, "email": "ann@example.com", "processing_restricted": False},
                                        {"id": 2, "email": "bob@example.com", "processing_restricted": False}])
        c.execute(t["orders"].insert(), [{"user_id": 1, "invoiced_on": OLD, "processing_restricted": False,
                                          "ordered_on": None, "ordered_at": None, "ordered_tz": None, **o}
                                         for o in orders])
        c.execute(t["order_lines"].insert(), [{"id": o["id"] * 10, "order_id": o["id"], "product": "vps"}
                                              for o in orders])


def ids(engine: sa.Engine, t: dict[str, sa.Table]) -> list[int]:
    with engine.connect() as c:
        return sorted(c.execute(sa.select(t["orders"].c.id)).scalars())


def line_ids(engine: sa.Engine, t: dict[str, sa.Table]) -> list[int]:
    with engine.connect() as c:
        return sorted(c.execute(sa.select(t["order_lines"].c.id)).scalars())


NOBODY = Keep(identities=Identities())
TODAY = datetime(2025, 3, 1, 10, 0, tzinfo=UTC)  # a year after a leap day


def rule(conn: SqlConnector) -> Any:
    return next(r for r in conn.retention_rules() if r.entity == "orders" and r.mechanism == "retention run")


def test_date_column_day_before_the_day_after_and_the_leap_day(db: tuple[str, sa.Engine, dict[str, sa.Table]]) -> None:
    url, engine, t = db
    seed(engine, t, [
        {"id": 1, "ordered_on": date(2024, 2, 27)},  # last day 2025-02-27
        {"id": 2, "ordered_on": date(2024, 2, 28)},  # last day 2025-02-28
        {"id": 3, "ordered_on": date(2024, 2, 29)},  # leap day: + 1 year is 2025-02-28, its last day
        {"id": 4, "ordered_on": date(2024, 3, 1)},   # last day 2025-03-01
        {"id": 5, "ordered_on": date(2024, 3, 2)},   # last day 2025-03-02
        {"id": 6, "ordered_on": None},               # undated: never due
    ])
    expect = {  # the day the rule runs -> order ids due
        datetime(2025, 2, 28, 0, 0, tzinfo=UTC): [1],
        datetime(2025, 2, 28, 23, 59, tzinfo=UTC): [1],  # any time of the day: the same
        datetime(2025, 3, 1, 0, 0, tzinfo=UTC): [1, 2, 3],
        datetime(2025, 3, 1, 23, 0, tzinfo=UTC): [1, 2, 3],
        datetime(2025, 3, 1, 23, 30, tzinfo=OSLO): [1, 2, 3],  # 21:30 UTC: still 1 March in UTC
        datetime(2025, 3, 2, 0, 30, tzinfo=OSLO): [1, 2, 3],  # 1 March 22:30 UTC
        datetime(2025, 3, 2, 0, 0, tzinfo=UTC): [1, 2, 3, 4],
        datetime(2025, 3, 3, 0, 0, tzinfo=UTC): [1, 2, 3, 4, 5],
    }
    for now, due in expect.items():
        c = connector(url, "ordered_on", now)
        found = c.retention_due(rule(c), now, NOBODY)
        assert (found.due, found.undated) == (len(due), 1), now
    now = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
    c = connector(url, "ordered_on", now)
    receipt = c.retention_apply(rule(c), now, NOBODY)
    assert ids(engine, t) == [4, 5, 6]
    assert line_ids(engine, t) == [40, 50, 60]  # the lines went with their orders
    assert receipt.changed == {"orders": 3, "order_lines": 3}
    again = c.retention_apply(rule(c), now, NOBODY)
    assert again.changed == {} and ids(engine, t) == [4, 5, 6]


def test_naive_timestamps_are_utc(db: tuple[str, sa.Engine, dict[str, sa.Table]]) -> None:
    url, engine, t = db
    seed(engine, t, [
        {"id": 1, "ordered_at": datetime(2024, 2, 29, 23, 59, 59)},  # last day 2025-02-28
        {"id": 2, "ordered_at": datetime(2024, 3, 1, 0, 0, 0)},  # last day 2025-03-01
        {"id": 3, "ordered_at": datetime(2024, 2, 29, 0, 0, 0)},
    ])
    c = connector(url, "ordered_at", TODAY)
    assert c.retention_due(rule(c), TODAY, NOBODY).due == 2
    c.retention_apply(rule(c), TODAY, NOBODY)
    assert ids(engine, t) == [2]
    nxt = datetime(2025, 3, 2, 0, 0, tzinfo=UTC)
    c = connector(url, "ordered_at", nxt)
    c.retention_apply(rule(c), nxt, NOBODY)
    assert ids(engine, t) == []


@pytest.mark.parametrize("db", ["postgresql"], indirect=True)  # MariaDB has no timestamptz: the naive test covers it
def test_timestamptz_is_read_in_utc(db: tuple[str, sa.Engine, dict[str, sa.Table]]) -> None:
    url, engine, t = db
    seed(engine, t, [
        {"id": 1, "ordered_tz": datetime(2024, 3, 1, 0, 30, tzinfo=OSLO)},  # 29 Feb 22:30 UTC: due on 1 March
        {"id": 2, "ordered_tz": datetime(2024, 2, 29, 23, 30, tzinfo=WEST)},  # 1 March 00:30 UTC: kept
        {"id": 3, "ordered_tz": datetime(2024, 2, 29, 23, 59, 59, tzinfo=UTC)},
    ])
    c = connector(url, "ordered_tz", TODAY)
    c.retention_apply(rule(c), TODAY, NOBODY)
    assert ids(engine, t) == [2]


def test_held_and_requested_rows_are_kept_and_counted(db: tuple[str, sa.Engine, dict[str, sa.Table]]) -> None:
    url, engine, t = db
    seed(engine, t, [
        {"id": 1, "ordered_on": date(2023, 1, 1)},  # due
        {"id": 2, "ordered_on": date(2023, 1, 1), "invoiced_on": date(2024, 1, 1)},  # due, hold until 2029
        {"id": 3, "ordered_on": date(2023, 1, 1), "user_id": 2},  # due, Bob has an open request
        {"id": 4, "ordered_on": date(2023, 1, 1), "user_id": 2, "invoiced_on": date(2024, 1, 1)},  # both
        {"id": 5, "ordered_on": date(2025, 1, 1)},  # not due
    ])
    bob = Keep(identities=Identities([Identity(IdentityType.EMAIL, "bob@example.com")]))
    c = connector(url, "ordered_on", TODAY)
    due = c.retention_due(rule(c), TODAY, bob)
    assert (due.due, due.kept_hold, due.kept_request) == (1, 2, 1)  # a held row counts as held first
    assert due.oldest is not None and due.oldest.date() == date(2023, 1, 1)
    receipt = c.retention_apply(rule(c), TODAY, bob)
    assert receipt.changed == {"orders": 1, "order_lines": 1}
    assert receipt.skipped == {"orders": {"kept under a legal hold that has not ended": 2,
                                          "kept: the person has an open request": 1}}
    assert ids(engine, t) == [2, 3, 4, 5]
    # once the request is done and the hold ended, they go
    later = datetime(2030, 1, 2, tzinfo=UTC)
    c = connector(url, "ordered_on", later)
    c.retention_apply(rule(c), later, NOBODY)
    assert ids(engine, t) == []


def test_an_interrupted_run_resumes_without_doing_anything_twice(db: tuple[str, sa.Engine, dict[str, sa.Table]]
                                                                 ) -> None:
    url, engine, t = db
    seed(engine, t, [{"id": i, "ordered_on": date(2023, 1, 1) if i % 3 else date(2025, 1, 1)} for i in range(1, 31)])
    due_ids = [i for i in range(1, 31) if i % 3]
    c = connector(url, "ordered_on", TODAY)
    saved: list[Any] = []

    class Crash(Exception):
        pass

    def checkpoint(cursor: Any, receipt: Any) -> None:
        saved.append((cursor, dict(receipt.changed)))
        if len(saved) == 2:
            raise Crash  # the process dies after the second batch committed

    with pytest.raises(Crash):
        c.retention_apply(rule(c), TODAY, NOBODY, batch=4, checkpoint=checkpoint)
    assert len(ids(engine, t)) == 30 - 8  # two batches of four, committed
    cursor, first = saved[-1]
    assert cursor == [due_ids[7]] and first == {"orders": 8, "order_lines": 8}
    rest = c.retention_apply(rule(c), TODAY, NOBODY, batch=4, cursor=cursor)
    assert rest.changed == {"orders": len(due_ids) - 8, "order_lines": len(due_ids) - 8}
    assert ids(engine, t) == [i for i in range(1, 31) if i % 3 == 0]
    assert c.retention_apply(rule(c), TODAY, NOBODY).changed == {}


def test_anonymise_masks_once(db: tuple[str, sa.Engine, dict[str, sa.Table]]) -> None:
    url, engine, t = db
    with engine.begin() as conn:
        conn.execute(t["users"].insert(), [{"id": 1, "email": "ann@example.com", "processing_restricted": False}])
    settings = _map("ordered_on")
    settings["entities"]["orders"]["retention"] = {"after": "1 year", "from": "ordered_on", "then": "anonymise",
                                                   "mask": {"invoiced_on": {"fixed": "2000-01-01"}},
                                                   "reason": "kept one year, then anonymised"}
    with engine.begin() as conn:
        conn.execute(t["orders"].insert(), [{"id": 1, "user_id": 1, "ordered_on": date(2023, 1, 1),
                                             "invoiced_on": date(2001, 1, 1), "processing_restricted": False}])
    ctx = ConnectorContext(env={URL_ENV: url}, secret_key=b"k", now=lambda: TODAY)
    c = SqlConnector.from_settings(SYSTEM, settings, ctx)
    r = next(x for x in c.retention_rules() if x.entity == "orders" and x.mechanism == "retention run")
    assert c.retention_apply(r, TODAY, NOBODY).changed == {"orders": 1}
    assert c.retention_apply(r, TODAY, NOBODY).changed == {}
    with engine.connect() as conn:
        assert conn.execute(sa.select(t["orders"].c.invoiced_on)).scalar_one() == date(2000, 1, 1)


# -- legal holds at their boundary (issue 19: the tests jumped to the day after a hold ends) ----------------

@pytest.mark.parametrize(("hold_day", "last_day"), [
    (date(2020, 6, 15), date(2025, 6, 15)),
    (date(2020, 2, 29), date(2025, 2, 28)),  # a leap day: the hold ends on 28 February
])
def test_an_erasure_on_the_holds_last_day_keeps_and_restricts_the_next_day_erases(
        db: tuple[str, sa.Engine, dict[str, sa.Table]], hold_day: date, last_day: date) -> None:
    url, engine, t = db
    seed(engine, t, [{"id": 1, "invoiced_on": hold_day}])
    # the first erasure masks her e-mail: the later ones find her by account id, as a scheduled hold end does
    ann = Identities([Identity(IdentityType.EMAIL, "ann@example.com"), Identity(IdentityType.ACCOUNT_ID, "1")])
    for moment in (datetime.combine(last_day, datetime.min.time(), UTC),
                   datetime.combine(last_day, datetime.max.time(), UTC).replace(microsecond=0)):
        receipt = connector(url, "ordered_on", moment).erase(ann)
        assert ids(engine, t) == [1], moment
        held = {h["entity"]: h for h in receipt.held}
        assert sorted(held) == ["order_lines", "orders"]
        assert held["orders"]["until"][:10] == last_day.isoformat()
        with engine.connect() as c:
            assert bool(c.execute(sa.select(t["orders"].c.processing_restricted)).scalar_one())
    nxt = datetime.combine(last_day + timedelta(days=1), datetime.min.time(), UTC)
    receipt = connector(url, "ordered_on", nxt).erase(ann)
    assert receipt.held == [] and ids(engine, t) == [] and line_ids(engine, t) == []


def test_a_timestamp_hold_ends_at_its_moment(db: tuple[str, sa.Engine, dict[str, sa.Table]]) -> None:
    """A hold from a timestamp runs to the same time of day five years on (documented): at 11:00 on its last day a
    row from 12:00 is kept, at 12:00:01 it is past."""
    url, engine, t = db
    seed(engine, t, [{"id": 1, "ordered_at": datetime(2020, 6, 15, 12, 0, 0)}])
    ann = Identities([Identity(IdentityType.EMAIL, "ann@example.com"), Identity(IdentityType.ACCOUNT_ID, "1")])
    connector(url, "ordered_on", datetime(2025, 6, 15, 11, 0, tzinfo=UTC), hold_from="ordered_at").erase(ann)
    assert ids(engine, t) == [1]
    connector(url, "ordered_on", datetime(2025, 6, 15, 12, 0, 1, tzinfo=UTC), hold_from="ordered_at").erase(ann)
    assert ids(engine, t) == []


# -- Art. 18: a restricted row is kept, not processed (erasing or masking it is processing) -------------------

def test_restricted_rows_are_kept_and_counted_apart_from_holds(db: tuple[str, sa.Engine, dict[str, sa.Table]]
                                                              ) -> None:
    url, engine, t = db
    seed(engine, t, [
        {"id": 1, "ordered_on": date(2023, 1, 1)},  # due
        {"id": 2, "ordered_on": date(2023, 1, 1), "processing_restricted": True},  # restricted, no running hold
        {"id": 3, "ordered_on": date(2023, 1, 1), "processing_restricted": True,
         "invoiced_on": date(2024, 1, 1)},  # restricted by a running hold: counted as held
        {"id": 4, "ordered_on": date(2023, 1, 1), "user_id": 2},  # Bob asked for restriction (ledger), unmarked
    ])
    bob = Keep(identities=Identities(), restricted=Identities([Identity(IdentityType.EMAIL, "bob@example.com")]))
    c = connector(url, "ordered_on", TODAY)
    due = c.retention_due(rule(c), TODAY, bob)
    assert (due.due, due.kept_hold, due.kept_request, due.kept_restricted) == (1, 1, 0, 2)
    for then in ("erase", "anonymise"):
        settings = _map("ordered_on", then)
        if then == "anonymise":
            settings["entities"]["orders"]["retention"]["mask"] = {"invoiced_on": {"fixed": "2001-01-01"}}
        c = SqlConnector.from_settings(SYSTEM, settings, ConnectorContext(env={URL_ENV: url}, secret_key=b"k",
                                                                           now=lambda: TODAY))
        receipt = c.retention_apply(rule(c), TODAY, bob)
        assert receipt.skipped == {"orders": {"kept under a legal hold that has not ended": 1,
                                              "kept: processing restricted (Art. 18)": 2}}, then
    assert ids(engine, t) == [2, 3, 4] and line_ids(engine, t) == [20, 30, 40]
    with engine.connect() as conn:  # anonymise did not touch them either
        assert conn.execute(sa.select(t["orders"].c.invoiced_on).where(t["orders"].c.id.in_([2, 4]))
                            ).scalars().all() == [OLD, OLD]
    # the restriction lifted (the marker cleared, Bob's lift done): they go as anyone's
    with engine.begin() as conn:
        conn.execute(t["orders"].update().values(processing_restricted=False))
    later = datetime(2030, 1, 2, tzinfo=UTC)
    c = connector(url, "ordered_on", later)
    assert c.retention_apply(rule(c), later, NOBODY).changed == {"orders": 3, "order_lines": 3}
    assert ids(engine, t) == []


def test_a_restricted_user_keeps_the_orders_it_owns_from_a_users_rule(db: tuple[str, sa.Engine,
                                                                                 dict[str, sa.Table]]) -> None:
    """A rule on the owner: erasing a user would take its orders along, so a restricted order below keeps it."""
    url, engine, t = db
    seed(engine, t, [{"id": 1, "ordered_on": date(2023, 1, 1), "processing_restricted": True},
                     {"id": 2, "ordered_on": date(2023, 1, 1), "user_id": 2}])
    settings = _map("ordered_on")
    users = settings["entities"]["users"]
    users["fields"]["created"] = "account"
    users["retention"] = {"after": "1 year", "from": "created", "reason": "accounts are kept one year"}
    with engine.begin() as conn:
        conn.execute(sa.text("ALTER TABLE users ADD created DATE"))
        conn.execute(sa.text("UPDATE users SET created = '2020-01-01'"))
    ctx = ConnectorContext(env={URL_ENV: url}, secret_key=b"k", now=lambda: TODAY)
    c = SqlConnector.from_settings(SYSTEM, settings, ctx)
    r = next(x for x in c.retention_rules() if x.entity == "users" and x.mechanism == "retention run")
    due = c.retention_due(r, TODAY, NOBODY)
    assert (due.due, due.kept_restricted) == (1, 1)
    c.retention_apply(r, TODAY, NOBODY)
    with engine.connect() as conn:
        emails = dict(conn.execute(sa.select(t["users"].c.id, t["users"].c.email)).all())
    assert emails[1] == "ann@example.com" and emails[2] != "bob@example.com"  # Bob's masked, Ann's kept


def test_mariadb_timestamp_column_is_read_in_utc(mariadb_database: Callable[[], str]) -> None:
    """MariaDB TIMESTAMP stores UTC and shows it in the session's time zone; dsar's sessions are UTC, so a
    value written from another zone lands on the right side of the boundary."""
    url = mariadb_database()
    engine = sa.create_engine(url)
    md, t = _schema("mariadb")
    md.create_all(engine)
    with engine.begin() as conn:
        conn.execute(sa.text("ALTER TABLE orders ADD ordered_ts TIMESTAMP NULL DEFAULT NULL"))
        conn.execute(t["users"].insert(), [{"id": 1, "email": "ann@example.com", "processing_restricted": False}])
        conn.execute(sa.text("SET time_zone = '+02:00'"))  # a client in Oslo writes local times
        for i, local in ((1, "2024-03-01 00:30:00"),  # 29 Feb 22:30 UTC: last day 28 Feb 2025, due on 1 March
                         (2, "2024-03-01 02:30:00"),  # 1 March 00:30 UTC: last day 1 March 2025, kept
                         (3, "2024-03-02 01:59:59")):  # 1 March 23:59:59 UTC: kept
            conn.execute(sa.text("INSERT INTO orders (id, user_id, invoiced_on, processing_restricted, ordered_ts) "
                                 "VALUES (:i, 1, '2000-01-01', 0, :ts)"), {"i": i, "ts": local})
    settings = _map("ordered_on")
    settings["entities"]["orders"]["fields"]["ordered_ts"] = "billing"
    settings["entities"]["orders"]["retention"]["from"] = "ordered_ts"
    for now, left in ((TODAY, [2, 3]), (datetime(2025, 3, 2, 0, 0, tzinfo=UTC), [])):
        ctx = ConnectorContext(env={URL_ENV: url}, secret_key=b"k", now=lambda now=now: now)
        c = SqlConnector.from_settings(SYSTEM, settings, ctx)
        with c.engine.connect() as conn:  # whatever the server's own zone: the connector's sessions are UTC
            assert conn.execute(sa.text("SELECT @@session.time_zone")).scalar_one() == "+00:00"
        c.retention_apply(rule(c), now, NOBODY)
        assert ids(engine, t) == left, now
    engine.dispose()
