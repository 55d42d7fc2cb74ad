"""Issue 19: a retention run over 1M order rows of which 200k are due, on PostgreSQL.

Targets: the run finishes in < 60 s with bounded memory (< 200 MB peak RSS of this process), and a concurrent
access request (the connector's locate + export for one person, in a second thread with its own connections) is
never blocked for more than a second.

    .venv/bin/python bench/bench_retention.py [--rows 1000000] [--due 200000] [--batch 1000]

Makes its own database (dsar_bench_<hex>) on DSAR_TEST_PG_URL's server and drops it afterwards. Rows are
generated server-side (generate_series), so seeding costs seconds, not minutes.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import threading
import time
import uuid
from datetime import UTC, datetime

import sqlalchemy as sa

from connectors.base import ConnectorContext, Identities, Identity, IdentityType
from connectors.retention import Keep
from connectors.sql import SqlConnector

ADMIN = os.environ.get("DSAR_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
NOW = datetime(2031, 6, 1, 3, 0, tzinfo=UTC)
USERS = 100_000

SETTINGS = {"kind": "sql", "url_env": "BENCH_URL", "entities": {
    "users": {"table": "users", "identities": {"email": "email"}, "fields": {"email": "contact"},
              "erase": {"strategy": "mask", "mask": {"email": "hash"}}},
    "orders": {"table": "orders", "references": {"user_id": "users.id"}, "fields": {"ordered_at": "billing",
                                                                                  "amount": "billing"},
               "erase": {"strategy": "delete"},
               "retention": {"after": "5 years", "from": "ordered_at", "reason": "Bookkeeping Act: 5 years"}}}}


def seed(url: str, rows: int, due: int) -> None:
    engine = sa.create_engine(url)
    with engine.begin() as c:
        c.execute(sa.text("CREATE TABLE users (id int PRIMARY KEY, email varchar(320) NOT NULL)"))
        c.execute(sa.text("CREATE INDEX ix_users_email ON users (lower(trim(email)))"))
        c.execute(sa.text("CREATE TABLE orders (id bigint PRIMARY KEY, user_id int NOT NULL REFERENCES users(id), "
                          "ordered_at timestamp NOT NULL, amount numeric(12,2) NOT NULL)"))
        c.execute(sa.text("INSERT INTO users SELECT g, 'user' || g || '@example.com' FROM generate_series(1, :n) g"),
                  {"n": USERS})
        # every (rows/due)-th order is 6 to 8 years old (due), the others 0 to 4 years (kept): spread over the key
        step = rows // due
        c.execute(sa.text(
            "INSERT INTO orders SELECT g, 1 + (g % :users), "
            "CASE WHEN g % :step = 0 THEN :now - make_interval(days => 2200 + (g % 700)) "
            "ELSE :now - make_interval(days => (g % 1400)) END, 10 FROM generate_series(1, :rows) g"),
            {"users": USERS, "step": step, "rows": rows, "now": NOW.replace(tzinfo=None)})
        c.execute(sa.text("CREATE INDEX ix_orders_user ON orders (user_id)"))
        c.execute(sa.text("CREATE INDEX ix_orders_ordered_at ON orders (ordered_at)"))
        c.execute(sa.text("ANALYZE"))
    engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--due", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=1000)
    args = parser.parse_args()
    admin = sa.create_engine(ADMIN, isolation_level="AUTOCOMMIT")
    name = f"dsar_bench_{uuid.uuid4().hex[:10]}"
    with admin.connect() as c:
        c.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = admin.url.set(database=name).render_as_string(hide_password=False)
    try:
        t0 = time.perf_counter()
        seed(url, args.rows, args.due)
        print(f"seeded {args.rows:,} orders ({args.due:,} due) in {time.perf_counter() - t0:.1f} s")
        ctx = ConnectorContext(env={"BENCH_URL": url}, now=lambda: NOW)
        conn = SqlConnector.from_settings("accounts", SETTINGS, ctx)
        reader = SqlConnector.from_settings("accounts", SETTINGS, ctx)  # the access request's own pool
        rule = next(r for r in conn.retention_rules() if r.mechanism == "retention run")
        person = Identities([Identity(IdentityType.EMAIL, "user77@example.com")])
        stop = threading.Event()
        latencies: list[float] = []

        def access() -> None:
            while not stop.is_set():
                start = time.perf_counter()
                reader.locate(person)
                sum(1 for _ in reader.export(person))
                latencies.append(time.perf_counter() - start)
                time.sleep(0.05)

        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        t0 = time.perf_counter()
        due = conn.retention_due(rule, NOW, Keep(identities=Identities()))
        plan_s = time.perf_counter() - t0
        worker = threading.Thread(target=access, daemon=True)
        worker.start()
        batches = 0

        def checkpoint(cursor: object, receipt: object) -> None:
            nonlocal batches
            batches += 1

        t0 = time.perf_counter()
        receipt = conn.retention_apply(rule, NOW, Keep(identities=Identities()), batch=args.batch,
                                       checkpoint=checkpoint)
        run_s = time.perf_counter() - t0
        stop.set()
        worker.join()
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        t0 = time.perf_counter()
        second = conn.retention_apply(rule, NOW, Keep(identities=Identities()), batch=args.batch)
        second_s = time.perf_counter() - t0
        print(f"plan: {due.due:,} due, oldest {due.oldest:%Y-%m-%d}, {plan_s:.2f} s")
        print(f"run: {receipt.changed.get('orders', 0):,} deleted in {batches} batches of {args.batch}, "
              f"{run_s:.1f} s ({receipt.changed.get('orders', 0) / run_s:,.0f} rows/s)")
        print(f"second run: {second.changed or 'nothing'} in {second_s:.2f} s")
        print(f"peak RSS: {rss:.0f} MB (before the run {rss0:.0f} MB)")
        print(f"concurrent access request (locate + export), {len(latencies)} during the run: "
              f"median {statistics.median(latencies) * 1000:.0f} ms, max {max(latencies) * 1000:.0f} ms")
        conn.close()
        reader.close()
    finally:
        with admin.connect() as c:
            c.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


if __name__ == "__main__":
    main()
