"""E-mail normalisation shared by intake and every connector.

One canonical form per address: trimmed, lower-cased (local part too: every system we talk
to treats addresses case-insensitively, and people type them in any case), domain in its
Unicode form. Systems may store the domain in its IDNA (punycode) form instead, so
`email_forms` gives both spellings to search for.
"""

from __future__ import annotations

import contextlib

import email_validator


class InvalidEmail(ValueError):
    """The text is not an e-mail address; the message is one line and repeats no input."""


def normalise_email(raw: str) -> str:
    text = (raw or "").strip()
    if not text:
        raise InvalidEmail("invalid e-mail address: empty")
    try:
        result = email_validator.validate_email(text, check_deliverability=False, allow_smtputf8=True)
    except email_validator.EmailNotValidError as exc:
        reason = str(exc).split(".")[0]
        raise InvalidEmail(f"invalid e-mail address: {reason.lower()}") from None
    return f"{result.local_part.lower()}@{result.domain.lower()}"


def email_forms(normalised: str) -> list[str]:
    """The spellings a system may have stored: Unicode domain and IDNA (ASCII) domain."""
    local, _, domain = normalised.rpartition("@")
    forms = {normalised}
    with contextlib.suppress(UnicodeError):
        forms.add(f"{local}@{domain.encode('idna').decode('ascii').lower()}")
    if domain.startswith("xn--") or ".xn--" in domain:
        with contextlib.suppress(UnicodeError):
            forms.add(f"{local}@{domain.encode('ascii').decode('idna').lower()}")
    return sorted(forms)
