"""`dsar datamap scan` benchmark: a 200-table, 2,000-column schema whose biggest tables hold 1M rows (issue 13).

    .venv/bin/python bench/bench_mapping.py [--engine postgresql|mariadb|both] [--tables 200] [--big 5]
                                            [--big-rows 1000000] [--keep]

A benchmark, not a test: it asserts nothing about time; it writes down what it measures.
  - creates a database of its own (`dsar_bench_mapping_<engine>`; dropped first if it exists, and at the end
    unless --keep) on the test servers (DSAR_TEST_PG_URL / DSAR_TEST_MARIADB_URL, as tests/conftest.py);
  - 200 tables of 10 columns (e-mail, name, phone, fødselsnummer, IP, free text, amounts, dates, ids), rows
    generated server-side (PostgreSQL generate_series, MariaDB's SEQUENCE engine seq_1_to_N) so setup is quick:
    the `--big` tables get 1M rows, the others 1,000; ANALYZE so the planner's row estimates are known;
  - runs the scan in a fresh subprocess (so its peak RSS is the scan's alone): `SqlScanner(...).scan()` with
    the default sample (50 rows a table), and reports wall time, peak RSS (ru_maxrss), columns classified
    personal, and how each big table was sampled.
Writes bench/out/mapping-<engine>.json and prints a summary.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
sys.path.insert(0, str(ROOT))

PG = os.environ.get("DSAR_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
MARIADB = os.environ.get("DSAR_TEST_MARIADB_URL", "mysql+pymysql://root@127.0.0.1:3306/")

COLUMNS_PG = ("id bigint PRIMARY KEY, customer_ref bigint, email text, full_name text, telefon text, "
              "fodselsnummer text, last_ip text, notes text, amount numeric(12,2), created_at timestamptz")
COLUMNS_MARIA = ("id bigint PRIMARY KEY, customer_ref bigint, email varchar(255), full_name varchar(255), "
                 "telefon varchar(32), fodselsnummer varchar(11), last_ip varchar(45), notes text, "
                 "amount decimal(12,2), created_at datetime")
# the same rows on both engines: n is the row number
VALUES = ("{n}, {n} % 1000 + 1, concat('user', {n}, '@example.com'), concat('Kari Nordmann ', {n}), "
          "concat('+47 9', lpad(concat('', {n} % 10000000), 7, '0')), '15108695088', "
          "concat('10.', {n} % 250, '.', {n} % 200, '.', {n} % 250), "
          "concat('Ring meg på +47 912 34 567 om ordre ', {n}), {n} % 10000, {ts}")


def setup(engine_name: str, tables: int, big: int, big_rows: int) -> str:
    admin_url = PG if engine_name == "postgresql" else MARIADB
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    name = f"dsar_bench_mapping_{engine_name}"
    with admin.connect() as conn:
        if engine_name == "postgresql":
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        else:
            conn.execute(sa.text(f"DROP DATABASE IF EXISTS `{name}`"))
            conn.execute(sa.text(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4"))
    admin.dispose()
    url = sa.make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    db = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    started = time.monotonic()
    with db.connect() as conn:
        for i in range(tables):
            rows = big_rows if i < big else 1000
            table = f"t{i:03d}_customers" if i % 2 == 0 else f"t{i:03d}_orders"
            if engine_name == "postgresql":
                conn.execute(sa.text(f"CREATE TABLE {table} ({COLUMNS_PG})"))
                values = VALUES.format(n="g", ts="now() - g * interval '1 minute'")
                conn.execute(sa.text(f"INSERT INTO {table} SELECT {values} FROM generate_series(1, {rows}) g"))
                conn.execute(sa.text(f"ANALYZE {table}"))
            else:
                conn.execute(sa.text(f"CREATE TABLE {table} ({COLUMNS_MARIA})"))
                values = VALUES.format(n="seq", ts="now() - interval seq minute")
                conn.execute(sa.text(f"INSERT INTO {table} SELECT {values} FROM seq_1_to_{rows}"))
                conn.execute(sa.text(f"ANALYZE TABLE {table}"))
    db.dispose()
    print(f"  {engine_name}: {tables} tables set up in {time.monotonic() - started:.1f}s", file=sys.stderr)
    return url


SCAN = """
import json, resource, sys, time
from discovery.mapping.scan_sql import SqlScanner
started = time.monotonic()
with SqlScanner("bench", sys.argv[1]) as scanner:
    scan = scanner.scan()
seconds = time.monotonic() - started
big = [t for t in scan.tables if (t.rows_estimate or 0) > 100000]
rss = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
print(json.dumps({"seconds": round(seconds, 2), "peak_rss_mb": rss,
                  "tables": len(scan.tables), "columns": sum(len(t.columns) for t in scan.tables),
                  "personal": sum(len(t.personal()) for t in scan.tables), "partial": scan.partial,
                  "big_tables": [{"table": t.name, "rows_estimate": t.rows_estimate, "sampled": t.sampled_rows,
                                  "sampling": t.sampling} for t in big]}))
"""


def run(engine_name: str, args: argparse.Namespace) -> dict[str, Any]:
    url = setup(engine_name, args.tables, args.big, args.big_rows)
    try:
        proc = subprocess.run([sys.executable, "-c", SCAN, url], cwd=ROOT, capture_output=True, text=True,
                              check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
        result = json.loads(proc.stdout)
    finally:
        if not args.keep:
            admin = sa.create_engine(PG if engine_name == "postgresql" else MARIADB, isolation_level="AUTOCOMMIT")
            name = f"dsar_bench_mapping_{engine_name}"
            with admin.connect() as conn:
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)' if engine_name == "postgresql"
                                     else f"DROP DATABASE IF EXISTS `{name}`"))
            admin.dispose()
    result.update(engine=engine_name, machine=f"{platform.node()} {platform.machine()}, {os.cpu_count()} CPUs",
                  command=" ".join(sys.argv))
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"mapping-{engine_name}.json").write_text(json.dumps(result, indent=2))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engine", choices=("postgresql", "mariadb", "both"), default="both")
    parser.add_argument("--tables", type=int, default=200)
    parser.add_argument("--big", type=int, default=5)
    parser.add_argument("--big-rows", type=int, default=1_000_000)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    for engine_name in (("postgresql", "mariadb") if args.engine == "both" else (args.engine,)):
        r = run(engine_name, args)
        print(f"{engine_name}: {r['tables']} tables, {r['columns']} columns, {r['personal']} personal, "
              f"{r['seconds']}s, peak RSS {r['peak_rss_mb']} MB, partial={r['partial']}")
        for t in r["big_tables"]:
            print(f"  {t['table']}: ~{t['rows_estimate']} rows, sampled {t['sampled']} by {t['sampling']}")


if __name__ == "__main__":
    main()
