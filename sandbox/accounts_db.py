"""A sample account database: users, their servers, the servers' login log, and orders.

It is the kind of schema the data map describes (config/datamap.yaml); the demo seeds it in
SQLite and the integration tests in PostgreSQL. E-mails are stored the way people typed
them (case, spaces), which is why lookups compare lower(trim(email)) through an index.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import sqlalchemy as sa

from sandbox.people import DECOY_EMAIL, PEOPLE, Person

metadata = sa.MetaData()

users = sa.Table(
    "users", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("email", sa.String(320), nullable=False, unique=True),
    sa.Column("full_name", sa.String(200)),
    sa.Column("phone", sa.String(40), index=True),
    sa.Column("password_hash", sa.String(200), nullable=False),
    sa.Column("created_at", sa.DateTime, nullable=False),
    sa.Column("last_login_at", sa.DateTime),
    sa.Column("matomo_visitor_id", sa.String(16), index=True),
    sa.Column("newsletter", sa.Boolean, nullable=False, default=False),
    sa.Column("processing_restricted", sa.Boolean, nullable=False, default=False),
    sa.Index("ix_users_email_norm", sa.func.lower(sa.func.trim(sa.text("email")))),
)

servers = sa.Table(
    "servers", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id"), nullable=False, index=True),
    sa.Column("hostname", sa.String(200), nullable=False),
    sa.Column("ip_address", sa.String(64)),
    sa.Column("plan", sa.String(40), nullable=False),
    sa.Column("datacenter", sa.String(40), nullable=False),
    sa.Column("created_at", sa.DateTime, nullable=False),
)

login_log = sa.Table(
    "login_log", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("server_id", sa.Integer, sa.ForeignKey("servers.id"), nullable=False, index=True),
    sa.Column("at", sa.DateTime, nullable=False),
    sa.Column("ip_address", sa.String(64)),
    sa.Column("user_agent", sa.String(300)),
)

orders = sa.Table(
    "orders", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id"), nullable=False, index=True),
    sa.Column("ordered_at", sa.DateTime, nullable=False),
    sa.Column("product", sa.String(100), nullable=False),
    sa.Column("amount", sa.Numeric(12, 2), nullable=False),
    sa.Column("currency", sa.String(3), nullable=False),
    sa.Column("processing_restricted", sa.Boolean, nullable=False, default=False),
)

STORED_EMAIL = {"jane": " Jane.Doe@Example.com ", "john": "john.smith@example.com", "ola": "Ola.Nordmann@example.no"}


def create(engine: sa.Engine, drop: bool = False) -> None:
    if drop:
        metadata.drop_all(engine)
    metadata.create_all(engine)


def seed(engine: sa.Engine, now: datetime | None = None) -> dict[str, int]:
    """Seed the sample people; returns how many rows each table got."""
    now = (now or datetime.now(UTC)).replace(tzinfo=None)
    with engine.begin() as conn:
        server_id, log_id, order_id = 1, 1, 1
        for n, person in enumerate(PEOPLE):
            conn.execute(users.insert().values(_user(person, STORED_EMAIL[person.key], now, n)))
            for s in range(2):
                conn.execute(servers.insert().values(
                    id=server_id, user_id=int(person.account_id), hostname=f"{person.key}-vps{s + 1}.example.net",
                    ip_address=f"192.0.2.{10 * n + s + 1}", plan="green-2", datacenter="osl1",
                    created_at=now - timedelta(days=400 - s)))
                for k in range(3):
                    conn.execute(login_log.insert().values(
                        id=log_id, server_id=server_id, at=now - timedelta(days=k, hours=n),
                        ip_address=f"198.51.100.{n + 1}", user_agent="Mozilla/5.0"))
                    log_id += 1
                server_id += 1
            # One order past the 5-year bookkeeping hold, two inside it.
            for age_days in (6 * 365, 400, 30):
                conn.execute(orders.insert().values(
                    id=order_id, user_id=int(person.account_id), ordered_at=now - timedelta(days=age_days),
                    product="VPS green-2 (12 months)", amount="119.00", currency="EUR"))
                order_id += 1
        # Someone whose address only starts like Jane's.
        conn.execute(users.insert().values(
            id=2001, email=DECOY_EMAIL, full_name="Decoy Person", phone=None, password_hash="x", created_at=now,
            last_login_at=now, matomo_visitor_id=None, newsletter=False, processing_restricted=False))
    return {"users": len(PEOPLE) + 1, "servers": server_id - 1, "login_log": log_id - 1, "orders": order_id - 1}


def _user(person: Person, stored_email: str, now: datetime, n: int) -> dict[str, object]:
    return {
        "id": int(person.account_id), "email": stored_email, "full_name": f"{person.first_name} {person.last_name}",
        "phone": person.phone, "password_hash": f"$argon2id$v=19$m=65536,t=3,p=4${'x' * 22}{n}",
        "created_at": now - timedelta(days=900), "last_login_at": now - timedelta(days=2),
        "matomo_visitor_id": person.matomo_visitor_id, "newsletter": n % 2 == 0, "processing_restricted": False,
    }
