import pytest

from connectors import redact as scrub
from connectors.redact import redact, safe_url


def test_personal_data_and_secrets_are_scrubbed() -> None:
    text = ("user jane.doe@example.com phone +47 912 34 567 Authorization: Bearer eyJhbGciOi.x.y "
            "token_auth=abc123&idSite=1 postgresql://app:hunter2@db/x jane%40example.com")
    out = redact(text)
    for secret in ("jane.doe", "912 34", "eyJhbGciOi", "abc123", "hunter2", "jane%40"):
        assert secret not in out
    assert "idSite=1" in out


def test_ids_and_timestamps_survive() -> None:
    text = "request 908ed717-e3f0-401a-bbfe-15e8238beb8b at 2026-11-25T18:10:42Z task 12345678"
    assert redact(text) == text


def test_safe_url_drops_query() -> None:
    assert safe_url("https://x.freshchat.com/v2/users?email=jane%40example.com") == "https://x.freshchat.com/v2/users"


@pytest.mark.parametrize("text", [
    "jane@example.com", "jane%40example.com", "call +4791234567", "Bearer abc.def", "basic Zm9vOmJhcg==",
    "api_key=s3cr3t", "password: hunter2", "postgresql://app:pw@db/x", "request.completed", "908ed717-e3f0",
    "user jane.doe@example.com phone +47 912 34 567 token_auth=abc123&idSite=1", "BEARER x", "no personal data here",
])
def test_the_quick_check_skips_only_text_no_pattern_would_change(text: str) -> None:
    """redact() returns early when the text holds none of what the patterns need; it must agree with all of them."""
    full = text
    for pattern, repl in ((scrub._URL_PASSWORD, r"\1***@"), (scrub._BEARER, r"\1 ***"), (scrub._SECRET_PARAM, r"\1***"),
                          (scrub._EMAIL, "<email>"), (scrub._PHONE, "<phone>")):
        full = pattern.sub(repl, full)
    assert redact(text) == full
    assert (scrub._MAYBE.search(text) is None) <= (full == text)  # skipped only where nothing would change
