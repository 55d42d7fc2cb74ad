"""HTTP API tokens: shown once at creation, stored only as a SHA-256, limited by scopes.

A token is 32 random bytes, so a plain SHA-256 is enough (no salt or slow hash needed): the
ledger never holds anything that would let someone call the API.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from connectors.sql_driver import execute
from discovery.engine.ledger import ApiToken
from discovery.engine.pipeline import InvalidInput, NotFoundError, audit
from discovery.engine.runtime import Runtime

# admin may do everything. act confirms, verifies, extends, denies, cancels and retries requests; subject shows the
# full e-mail on request lists (masked otherwise).
SCOPES = ("submit", "read", "download", "admin", "act", "subject")
PREFIX = "dsar_"
_TOKENS: sa.Table = ApiToken.__table__  # type: ignore[assignment]
_BY_HASH = sa.select(_TOKENS).where(_TOKENS.c.token_hash == sa.bindparam("digest"))
_TOUCH_EVERY = timedelta(seconds=60)  # last_used_at is a hint; one write a minute per token is plenty


class TokenRejected(Exception):
    """Missing, unknown, expired or revoked token (HTTP 401)."""


class ScopeMissing(Exception):
    """A valid token without the scope the call needs (HTTP 403)."""


@dataclass(frozen=True)
class TokenInfo:
    name: str
    scopes: tuple[str, ...]
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None

    def allows(self, scope: str) -> bool:
        return scope in self.scopes or "admin" in self.scopes

    def to_dict(self) -> dict[str, object]:
        return {"name": self.name, "scopes": list(self.scopes), "created_at": _iso(self.created_at),
                "expires_at": _iso(self.expires_at), "revoked_at": _iso(self.revoked_at),
                "last_used_at": _iso(self.last_used_at)}


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _info(row: ApiToken | sa.Row[Any]) -> TokenInfo:
    return TokenInfo(row.name, tuple(row.scopes), row.created_at, row.expires_at, row.revoked_at, row.last_used_at)


def create_token(rt: Runtime, name: str, scopes: list[str], actor: str,
                 expires_in: timedelta | None = None) -> tuple[TokenInfo, str]:
    """Make a token; the plain value is returned here and never again."""
    name = name.strip()
    if not name or len(name) > 128:
        raise InvalidInput("a token name of 1 to 128 characters is required")
    unknown = sorted(set(scopes) - set(SCOPES))
    if unknown or not scopes:
        raise InvalidInput(f"scopes must be some of: {', '.join(SCOPES)} (got: {', '.join(unknown) or 'none'})")
    token = PREFIX + secrets.token_urlsafe(32)
    now = rt.clock()
    row = ApiToken(name=name, token_hash=hash_token(token), scopes=sorted(set(scopes)), created_at=now,
                   expires_at=now + expires_in if expires_in else None)
    try:
        with rt.sessions.begin() as s:
            s.add(row)
            s.flush()
            audit(s, "api_token.created", actor, token=name, scopes=row.scopes)
            info = _info(row)
    except IntegrityError:
        raise InvalidInput(f"a token named '{name}' exists already (revoked names stay taken)") from None
    return info, token


def list_tokens(rt: Runtime) -> list[TokenInfo]:
    with rt.sessions() as s:
        return [_info(r) for r in s.scalars(sa.select(ApiToken).order_by(ApiToken.name))]


def revoke_token(rt: Runtime, name: str, actor: str) -> TokenInfo:
    with rt.sessions.begin() as s:
        row = s.scalars(sa.select(ApiToken).where(ApiToken.name == name)).first()
        if row is None:
            raise NotFoundError(f"unknown token '{name}'")
        if row.revoked_at is None:
            row.revoked_at = rt.clock()
            audit(s, "api_token.revoked", actor, token=name)
        return _info(row)


def require_scope(info: TokenInfo, scope: str) -> None:
    if not info.allows(scope):
        raise ScopeMissing(f"this API token lacks the '{scope}' scope")


def authenticate(rt: Runtime, presented: str | None, scope: str) -> TokenInfo:
    """The token's holder, if the token is live and has `scope`; else TokenRejected / ScopeMissing."""
    if not presented:
        raise TokenRejected("an API token is required (Authorization: Bearer <token>)")
    digest = hash_token(presented)
    now = rt.clock()
    # Core, built once: every API call asks, and an ORM load costs more than it. On PostgreSQL in autocommit: a
    # transaction around one read would only add its BEGIN and ROLLBACK round trips.
    with (rt.autocommit or rt.engine).connect() as conn:
        row = execute(conn, _BY_HASH, {"digest": digest}).first()
        # The index finds the row by hash; the comparison itself is constant-time all the same.
        if row is None or not hmac.compare_digest(row.token_hash, digest):
            raise TokenRejected("unknown API token")
        info = _info(row)
    if info.revoked_at is not None:
        raise TokenRejected("this API token was revoked")
    if info.expires_at is not None and info.expires_at <= now:
        raise TokenRejected("this API token has expired")
    require_scope(info, scope)
    if info.last_used_at is None or now - info.last_used_at > _TOUCH_EVERY:
        with rt.sessions.begin() as s:
            s.execute(sa.update(ApiToken).where(ApiToken.token_hash == digest).values(last_used_at=now))
    return info
