"""Seed a PostgreSQL account database at benchmark size (sandbox.accounts_db schema).

    .venv/bin/python bench/seed_accounts.py \
        --url postgresql+psycopg://postgres@127.0.0.1:5432/dsar_bench_accounts

Creates the database when missing, recreates the schema with sandbox.accounts_db.create(drop=True),
seeds the sample people (sandbox.accounts_db.seed: Jane, John, Ola and the decoy), then bulk-loads
users, servers, orders and login_log rows with COPY. E-mails are unique people but are stored the
way people type them: mixed case, capitalised names, upper case, leading/trailing spaces. Ids start
above the sample people's ids. Deterministic for a given --random-seed. ANALYZE at the end.

This is benchmark tooling; nothing here asserts timings.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import sqlalchemy as sa
from psycopg import sql

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sandbox import accounts_db

DEFAULT_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/dsar_bench_accounts"
# Bulk ids start here: above the sample people (1001-1003), the decoy (2001) and their child rows (< 100).
USER_ID_START = 10_001
CHILD_ID_START = 1_001

FIRST = ["anna", "bjorn", "carla", "dag", "eva", "frode", "gina", "hans", "ida", "jonas", "kari", "lars",
         "maria", "nils", "olga", "per", "rita", "sven", "tone", "ulf", "vera", "william", "yngve", "zara"]
LAST = ["hansen", "johansen", "olsen", "larsen", "andersen", "pedersen", "nilsen", "kristiansen", "jensen",
        "karlsen", "johnsen", "pettersen", "eriksen", "berg", "haugen", "hagen", "johannessen", "andreassen"]
DOMAINS = ["example.com", "example.no", "example.org", "mail.example.net", "firma.example.no", "example.de"]
PLANS = ["green-1", "green-2", "green-4", "green-8", "green-16"]
DCS = ["osl1", "osl2", "svg1", "trd1"]
PRODUCTS = ["VPS green-1 (1 month)", "VPS green-2 (12 months)", "VPS green-4 (12 months)", "Backup 100 GB",
            "Extra IPv4", "Managed DB small"]
AGENTS = ["Mozilla/5.0 (X11; Linux x86_64)", "Mozilla/5.0 (Macintosh)", "OpenSSH_9.2", "curl/8.4.0",
          "Mozilla/5.0 (Windows NT 10.0; Win64; x64)"]


def stored_variant(email: str, rng: random.Random) -> str:
    """How a person typed their address at sign-up: mostly as-is, often with capitals or spaces."""
    r = rng.random()
    if r < 0.55:
        return email
    local, _, domain = email.partition("@")
    if r < 0.75:  # Capitalised name parts: Anna.Hansen12@example.com
        return ".".join(p[:1].upper() + p[1:] for p in local.split(".")) + "@" + domain
    if r < 0.85:  # all upper case
        return email.upper()
    if r < 0.95:  # stray spaces
        # spaces only: PostgreSQL trim() strips spaces, not tabs or newlines
        lead, trail = rng.choice([(" ", ""), ("", " "), (" ", " "), ("  ", "  ")])
        return lead + email + trail
    return " " + local.title() + "@" + domain.capitalize() + " "  # both


def psycopg_url(url: str) -> str:
    return sa.make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def scalar(conn: psycopg.Connection, query: Any, params: tuple[object, ...] = ()) -> Any:
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return row[0]


def ensure_database(url: str) -> None:
    u = sa.make_url(url)
    assert u.database
    admin = psycopg_url(url).rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (u.database,)).fetchone():
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(u.database)))
            print(f"created database {u.database}")


def ts(base: datetime, rng: random.Random, max_days: int) -> datetime:
    return base - timedelta(seconds=rng.randrange(max_days * 86_400))


def users_rows(n: int, now: datetime, rng: random.Random) -> Iterator[tuple[object, ...]]:
    for k in range(n):
        uid = USER_ID_START + k
        first, last = rng.choice(FIRST), rng.choice(LAST)
        email = f"{first}.{last}{uid}@{rng.choice(DOMAINS)}"  # unique per user (normalised form)
        created = ts(now, rng, 3000)
        yield (
            uid, stored_variant(email, rng), f"{first.title()} {last.title()}",
            f"+479{uid:07d}" if rng.random() < 0.8 else None,
            f"$argon2id$v=19$m=65536,t=3,p=4${uid:022d}",
            created, created + timedelta(days=rng.randrange(1, 900)) if rng.random() < 0.9 else None,
            f"{rng.getrandbits(64):016x}" if rng.random() < 0.6 else None,
            rng.random() < 0.3, False,
        )


def servers_rows(n: int, n_users: int, now: datetime, rng: random.Random) -> Iterator[tuple[object, ...]]:
    for k in range(n):
        sid = CHILD_ID_START + k
        uid = USER_ID_START + rng.randrange(n_users)
        yield (sid, uid, f"vps{sid}.example.net", f"10.{(sid >> 16) & 255}.{(sid >> 8) & 255}.{sid & 255}",
               rng.choice(PLANS), rng.choice(DCS), ts(now, rng, 2000))


def orders_rows(n: int, n_users: int, now: datetime, rng: random.Random) -> Iterator[tuple[object, ...]]:
    for k in range(n):
        yield (CHILD_ID_START + k, USER_ID_START + rng.randrange(n_users), ts(now, rng, 8 * 365),
               rng.choice(PRODUCTS), f"{rng.randrange(500, 50_000) / 100:.2f}", rng.choice(["EUR", "NOK"]), False)


def login_rows(n: int, n_servers: int, now: datetime, rng: random.Random) -> Iterator[tuple[object, ...]]:
    for k in range(n):
        yield (CHILD_ID_START + k, CHILD_ID_START + rng.randrange(n_servers), ts(now, rng, 365),
               f"198.51.{rng.randrange(256)}.{rng.randrange(1, 255)}", rng.choice(AGENTS))


def copy_rows(conn: psycopg.Connection, table: str, columns: list[str], rows: Iterator[tuple[object, ...]]) -> int:
    n = 0
    stmt = sql.SQL("COPY {} ({}) FROM STDIN").format(
        sql.Identifier(table), sql.SQL(", ").join(sql.Identifier(c) for c in columns))
    with conn.cursor() as cur, cur.copy(stmt) as cp:
        for row in rows:
            cp.write_row(row)
            n += 1
    return n


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", default=DEFAULT_URL, help=f"SQLAlchemy URL of the account DB (default {DEFAULT_URL})")
    p.add_argument("--users", type=int, default=100_000)
    p.add_argument("--servers", type=int, default=150_000)
    p.add_argument("--orders", type=int, default=300_000)
    p.add_argument("--login-log", type=int, default=300_000)
    p.add_argument("--random-seed", type=int, default=20_251_125)
    args = p.parse_args(argv)

    t_all = time.perf_counter()
    ensure_database(args.url)
    engine = sa.create_engine(args.url)
    accounts_db.create(engine, drop=True)
    sample = accounts_db.seed(engine)
    engine.dispose()
    print(f"schema created, sample people seeded: {sample}")

    rng = random.Random(args.random_seed)
    now = datetime.now(UTC).replace(tzinfo=None, microsecond=0)
    timings: dict[str, float] = {}
    counts: dict[str, int] = {}
    with psycopg.connect(psycopg_url(args.url)) as conn:
        for table, columns, rows in (
            ("users", ["id", "email", "full_name", "phone", "password_hash", "created_at", "last_login_at",
                       "matomo_visitor_id", "newsletter", "processing_restricted"],
             users_rows(args.users, now, rng)),
            ("servers", ["id", "user_id", "hostname", "ip_address", "plan", "datacenter", "created_at"],
             servers_rows(args.servers, args.users, now, rng)),
            ("orders", ["id", "user_id", "ordered_at", "product", "amount", "currency", "processing_restricted"],
             orders_rows(args.orders, args.users, now, rng)),
            ("login_log", ["id", "server_id", "at", "ip_address", "user_agent"],
             login_rows(args.login_log, args.servers, now, rng)),
        ):
            t = time.perf_counter()
            copy_rows(conn, table, columns, rows)
            conn.commit()
            timings[table] = time.perf_counter() - t
        conn.autocommit = True
        t = time.perf_counter()
        conn.execute("ANALYZE")
        timings["analyze"] = time.perf_counter() - t
        for table in ("users", "servers", "login_log", "orders"):
            counts[table] = scalar(conn, sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table)))
        variants = scalar(conn, "SELECT count(*) FROM users WHERE email <> lower(trim(email))")
        size = scalar(conn, "SELECT pg_size_pretty(pg_database_size(current_database()))")

    total = time.perf_counter() - t_all
    print("table       rows      load s")
    for table in ("users", "servers", "orders", "login_log"):
        print(f"{table:<10} {counts[table]:>8}  {timings[table]:8.2f}")
    print(f"{'analyze':<19} {timings['analyze']:8.2f}")
    print(f"users stored with case/space variants: {variants} of {counts['users']}")
    print(f"database size: {size}; total {total:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
