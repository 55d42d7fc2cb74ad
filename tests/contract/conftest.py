"""Contract tests: vendor HTTP mocked with `responses`, strict in both directions.

`vendor` fails a test on any call nobody registered (responses raises ConnectionError, which
the client retries a few times under FAST_RETRY and then reports) and on any registered call
that never fired.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import responses

from connectors.base import ConnectorContext
from connectors.http import RetryPolicy


@pytest.fixture
def vendor() -> Iterator[responses.RequestsMock]:
    with responses.RequestsMock(assert_all_requests_are_fired=True) as mock:
        yield mock


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Record backoff sleeps instead of sleeping (tests assert on them, and stay fast)."""
    slept: list[float] = []
    monkeypatch.setattr("connectors.http.time.sleep", slept.append)
    return slept


@pytest.fixture
def ctx() -> ConnectorContext:
    return ConnectorContext(
        env={
            "DSAR_FRESHCHAT_TOKEN": "fc-test-token",
            "DSAR_MAUTIC_USER": "api-user",
            "DSAR_MAUTIC_PASSWORD": "api-pass",
            "DSAR_MAUTIC_CLIENT_ID": "mautic-client",
            "DSAR_MAUTIC_CLIENT_SECRET": "mautic-secret",
            "DSAR_SALESMANAGO_CLIENT_ID": "sm-client",
            "DSAR_SALESMANAGO_API_KEY": "sm-key",
            "DSAR_SALESMANAGO_API_SECRET": "sm-secret",
            "DSAR_MATOMO_TOKEN": "matomo-token-123",
        },
        secret_key=b"contract-test-key",
    )


FAST_RETRY = RetryPolicy(attempts=3, backoff_base=0.01, backoff_max=0.02)
