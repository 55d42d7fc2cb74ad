"""The manifest's signature: HMAC-SHA256 under a key only the controller holds.

The manifest lists every member's SHA-256, so changing a member is caught; changing a member *and* the
manifest is caught only by a signature. `manifest.json` carries

    "signature": {"alg": "HMAC-SHA256", "key_id": "<16 hex>", "value": "<64 hex>"}

over the manifest without that key, as canonical JSON (orjson, sorted keys, no spaces), so the bytes
the file happens to be written in do not matter. `key_id` names the key (a hash of it, not the key) so a
bundle signed with another key reads as such. Whoever holds the key (the controller, an auditor it
trusts) can check it with `dsar verify`; a person without the key still checks the member hashes.

The key: `$DSAR_MANIFEST_KEY` (the variable `secrets.manifest_key_env` names), or one derived from the
secret key when that is unset. Secrets come only from the environment.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Mapping
from typing import Any

import orjson

ALG = "HMAC-SHA256"
FIELD = "signature"
_DERIVE = b"dsar manifest signature v1"
_KEY_ID = b"dsar manifest key id"
MANIFEST_KEY_ENV = "DSAR_MANIFEST_KEY"
SECRET_KEY_ENV = "DSAR_SECRET_KEY"


def manifest_key(own: bytes, secret_key: bytes) -> bytes:
    """The signing key: the dedicated one when set, else derived from the secret key (b"" when neither)."""
    if own:
        return own
    return hmac.new(secret_key, _DERIVE, hashlib.sha256).digest() if secret_key else b""


def key_from_environment(env: Mapping[str, str] | None = None) -> bytes:
    """The key from the default variable names (for code that has no settings at hand); b"" when none is set."""
    env = os.environ if env is None else env
    return manifest_key(env.get(MANIFEST_KEY_ENV, "").encode(), env.get(SECRET_KEY_ENV, "").encode())


def key_id(key: bytes) -> str:
    return hmac.new(key, _KEY_ID, hashlib.sha256).hexdigest()[:16]


def _canonical(manifest: Mapping[str, Any]) -> bytes:
    return orjson.dumps({k: v for k, v in manifest.items() if k != FIELD}, option=orjson.OPT_SORT_KEYS)


def sign(manifest: Mapping[str, Any], key: bytes) -> dict[str, str]:
    """The signature entry for `manifest` (its own `signature` key, if any, is left out of what is signed)."""
    mac = hmac.new(key, _canonical(manifest), hashlib.sha256).hexdigest()
    return {"alg": ALG, "key_id": key_id(key), "value": mac}


def check(manifest: Mapping[str, Any], key: bytes | None) -> tuple[str, str | None]:
    """(status, problem): status is valid | invalid | unsigned | not checked; problem is a one-line reason or None.

    With a key, a missing or wrong signature is a problem: whoever can change data and manifest can drop
    the signature too. Without a key nothing can be said about it ("not checked").
    """
    entry = manifest.get(FIELD)
    if not key:
        return "not checked", None
    if not isinstance(entry, dict):
        return "unsigned", "manifest.json is not signed"
    if entry.get("alg") != ALG:
        return "invalid", f"manifest signature: unknown algorithm {str(entry.get('alg'))[:40]!r}"
    if entry.get("key_id") != key_id(key):
        return "invalid", "manifest signature: made with another key"
    try:
        expected = hmac.new(key, _canonical(manifest), hashlib.sha256).hexdigest()
    except (TypeError, orjson.JSONEncodeError):
        return "invalid", "manifest signature: the manifest cannot be put in canonical form"
    if not isinstance(entry.get("value"), str) or not hmac.compare_digest(expected, entry["value"]):
        return "invalid", "manifest signature does not match: the manifest was changed"
    return "valid", None
