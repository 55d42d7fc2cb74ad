"""Signed, expiring download tokens: a link a person can open without an API token.

`<payload>.<mac>`, both base64url: the payload names one request and an expiry (Unix seconds),
the MAC is HMAC-SHA256 under a key derived from the secret key, so nothing is stored and a token
works only for its own request until it expires.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import orjson

from discovery.engine.settings import Settings

_PURPOSE = b"dsar download token v1"
# dsar issues links for api.download_token_hours (30 days at most); an expiry further out was not made by
# this code, and one past datetime's range cannot even be represented (it used to end in a 500)
MAX_LIFETIME = timedelta(days=31)


class DownloadTokenError(Exception):
    """A token that is malformed, tampered with, or expired; the message says which."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class DownloadGrant:
    request_id: str
    expires_at: datetime


def _key(secret_key: bytes) -> bytes:
    return hmac.new(secret_key, _PURPOSE, hashlib.sha256).digest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def make_token(secret_key: bytes, request_id: str, expires_at: datetime) -> str:
    payload = _b64(orjson.dumps({"r": request_id, "e": int(expires_at.timestamp())}))
    mac = hmac.new(_key(secret_key), payload.encode(), hashlib.sha256).digest()
    return f"{payload}.{_b64(mac)}"


def read_token(secret_key: bytes, token: str, now: datetime) -> DownloadGrant:
    """The grant a genuine, unexpired token carries; DownloadTokenError otherwise."""
    payload, sep, mac = token.partition(".")
    if not sep or not payload or not mac or len(token) > 512:
        raise DownloadTokenError("malformed download token", "invalid_download_token")
    expected = hmac.new(_key(secret_key), payload.encode(), hashlib.sha256).digest()
    try:
        given = _unb64(mac)
    except (ValueError, TypeError):
        raise DownloadTokenError("malformed download token", "invalid_download_token") from None
    if not hmac.compare_digest(expected, given):
        raise DownloadTokenError("download token signature does not match", "invalid_download_token")
    try:
        data = orjson.loads(_unb64(payload))
        grant = DownloadGrant(str(data["r"]), datetime.fromtimestamp(int(data["e"]), UTC))
    except (ValueError, TypeError, KeyError, OverflowError, OSError, orjson.JSONDecodeError):
        raise DownloadTokenError("malformed download token", "invalid_download_token") from None
    if grant.expires_at <= now:
        raise DownloadTokenError("this download link has expired; ask for a new one", "download_token_expired")
    if grant.expires_at > now + MAX_LIFETIME:
        raise DownloadTokenError("download token expiry is beyond what dsar issues", "invalid_download_token")
    return grant


class NoPublicUrl(Exception):
    """api.public_url is unset outside the embedded demo: dsar does not guess the address people reach it at."""


NO_PUBLIC_URL = ("download links are off: api.public_url is unset (set DSAR_API_PUBLIC_URL to the address people "
                 "reach the API at, e.g. https://dsar.example.com)")


def links_refused(settings: Settings) -> str | None:
    """Why download links cannot be made with these settings (one line), or None."""
    if settings.api.public_url or settings.broker.url.startswith("stub://"):
        return None
    return NO_PUBLIC_URL


def public_base(settings: Settings) -> str:
    """api.public_url. Only the embedded demo (stub:// broker, one machine) falls back to the address `dsar serve`
    listens on: a guessed host or port elsewhere sent people to another program (issue 14)."""
    if settings.api.public_url:
        return settings.api.public_url
    if why := links_refused(settings):
        raise NoPublicUrl(why)
    host = settings.api.host if settings.api.host not in ("", "0.0.0.0", "::") else "127.0.0.1"
    return f"http://{f'[{host}]' if ':' in host else host}:{settings.api.port}"


def download_link(settings: Settings, request_id: str, now: datetime) -> tuple[str, datetime]:
    """A link the person can open: the bundle endpoint with a fresh token, and when it stops working. NoPublicUrl
    when api.public_url is unset outside the embedded demo."""
    base = public_base(settings)
    expires_at = now + timedelta(hours=settings.api.download_token_hours)
    token = make_token(settings.secret_key, request_id, expires_at)
    return f"{base}/v1/requests/{request_id}/bundle?token={token}", expires_at
