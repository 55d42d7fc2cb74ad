"""Scrub secrets and personal data from anything that may reach a log or an error message."""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

_EMAIL = re.compile(r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+(?:@|%40)[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+")
_BEARER = re.compile(r"(?i)(bearer|basic)\s+[A-Za-z0-9._~+/=-]+")
_SECRET_PARAM = re.compile(
    r"(?i)((?:token_auth|access_token|api_?key|apisecret|api_secret|password|secret|sha|client_secret)"
    r"[\"']?\s*[=:]\s*[\"']?)[^&\s\"',}]+"
)
# International form only: bare digit runs are ids and timestamps far more often than phones.
_PHONE = re.compile(r"(?<![\w+])\+\d[\d ()-]{6,}\d")
_URL_PASSWORD = re.compile(r"(://[^:/@\s]+:)[^@\s]+@")


# Something each pattern above needs: text without any of it (an id, an event name) has nothing to scrub. Every
# log line's every value passes through redact(), so most calls stop at this one search.
_MAYBE = re.compile(r"(?i)[@=:]|%40|bearer|basic|\+\d")


def redact(text: str) -> str:
    """Replace e-mails, phone numbers, bearer tokens, secret parameters and URL passwords."""
    if not _MAYBE.search(text):
        return text
    text = _URL_PASSWORD.sub(r"\1***@", text)
    text = _BEARER.sub(r"\1 ***", text)
    text = _SECRET_PARAM.sub(r"\1***", text)
    text = _EMAIL.sub("<email>", text)
    return _PHONE.sub("<phone>", text)


def safe_url(url: str) -> str:
    """A URL fit for an error message: scheme, host and path only (queries carry e-mails and tokens)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return redact(urlunsplit((parts.scheme, host, parts.path, "", "")))
