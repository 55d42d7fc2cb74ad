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
