"""Console logins: an API token is exchanged once for a session cookie; the session lives in the ledger.

Server-side (table `console_sessions`, migration 0010) rather than a signed cookie, so a logout ends the session
everywhere at once and revoking or expiring the token ends every session it opened: each page looks the session
and its token up together (one query). The cookie holds 32 random bytes; the ledger only their SHA-256, like API
tokens. Each session has its own CSRF token (synchronizer token), which every form carries back.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from discovery.engine.ledger import ApiToken, Base
from discovery.engine.pipeline import audit
from discovery.engine.runtime import Runtime
from discovery.intake import api_tokens

COOKIE = "dsar_session"
_PURGE_AFTER = timedelta(days=1)  # ended or expired rows are kept a day (a look back), then deleted at a login


class ConsoleSession(Base):
    __tablename__ = "console_sessions"

    id: Mapped[str] = mapped_column(sa.String(64), primary_key=True)  # SHA-256 of the cookie's value
    token_hash: Mapped[str] = mapped_column(sa.String(64), index=True)
    csrf: Mapped[str] = mapped_column(sa.String(64))
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime] = mapped_column(index=True)
    ended_at: Mapped[datetime | None]


@dataclass(frozen=True)
class Who:
    """The person at the console: the token's name and scopes, and this session's CSRF token."""

    name: str
    scopes: tuple[str, ...]
    csrf: str
    expires_at: datetime

    def allows(self, scope: str) -> bool:
        return scope in self.scopes or "admin" in self.scopes

    @property
    def actor(self) -> str:
        return f"ui:{self.name}"


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def login(rt: Runtime, presented: str, scope: str, lifetime: timedelta) -> tuple[str, Who]:
    """A new session for a live token with `scope`: (cookie value, who). TokenRejected / ScopeMissing otherwise."""
    info = api_tokens.authenticate(rt, presented.strip(), scope)
    cookie, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    now = rt.clock()
    row = ConsoleSession(id=_digest(cookie), token_hash=api_tokens.hash_token(presented.strip()), csrf=csrf,
                         created_at=now, expires_at=now + lifetime)
    with rt.sessions.begin() as s:
        s.execute(sa.delete(ConsoleSession).where(ConsoleSession.expires_at < now - _PURGE_AFTER))
        s.add(row)
        audit(s, "console.login", f"ui:{info.name}")
    return cookie, Who(info.name, info.scopes, csrf, row.expires_at)


def current(rt: Runtime, cookie: str | None) -> Who | None:
    """The session's holder, if the session and its token are both still live."""
    if not cookie or len(cookie) > 128:
        return None
    digest = _digest(cookie)
    now = rt.clock()
    with rt.sessions() as s:
        found = s.execute(sa.select(ConsoleSession, ApiToken).join(
            ApiToken, ApiToken.token_hash == ConsoleSession.token_hash).where(ConsoleSession.id == digest)).first()
    if found is None:
        return None
    session, token = found
    if not hmac.compare_digest(session.id, digest) or session.ended_at is not None or session.expires_at <= now:
        return None
    if token.revoked_at is not None or (token.expires_at is not None and token.expires_at <= now):
        return None
    return Who(token.name, tuple(token.scopes), session.csrf, session.expires_at)


def logout(rt: Runtime, cookie: str, who: Who) -> None:
    with rt.sessions.begin() as s:
        s.execute(sa.update(ConsoleSession).where(ConsoleSession.id == _digest(cookie),
                                                  ConsoleSession.ended_at.is_(None)).values(ended_at=rt.clock()))
        audit(s, "console.logout", who.actor)


def csrf_ok(who: Who, presented: str | None) -> bool:
    return bool(presented) and hmac.compare_digest(who.csrf.encode(), (presented or "").encode())
