"""A task's retry waits by the task's attempt, not by the retries of whichever message carries it.

A task of a local system first runs inside its discovery (InlineWakeups): its first failure retries the discover
message, whose redelivery wakes the task's own execute message, whose retry count starts again at zero. Backing off
by the message's count made attempts come about twice as fast as worker.max_attempts and retry_backoff_seconds
imply (a 5 s database outage could use up all five; the fault campaign caught it once). Run in a fresh interpreter:
importing the actors sets up the broker from the settings.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.unit import test_import_footprint

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = """
import json
import dramatiq
from discovery.engine import pipeline
from discovery.engine.settings import load_settings
from workers import app
app.setup(load_settings())
from workers import actors

def delay(exc):
    def work():
        raise exc
    try:
        actors.handle("execute", work, task_id=1)
    except dramatiq.Retry as retry:
        return retry.delay
    return "not retried"

out = {"min": actors._RETRY["min_backoff"], "max": actors._RETRY["max_backoff"]}
out["tasks"] = {a: [delay(pipeline.RetryLater("x", attempt=a)) for _ in range(20)] for a in (1, 2, 3, 4)}
out["no_attempt"] = delay(pipeline.RetryLater("x"))
out["other"] = delay(pipeline.LedgerUnavailable("ledger away"))
print(json.dumps(out))
"""


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """A worker child's settings and environment, as test_import_footprint makes them."""
    return test_import_footprint.worker_env(tmp_path)


def test_a_tasks_retry_waits_by_its_attempt(env: dict[str, str]) -> None:
    done = subprocess.run([sys.executable, "-c", SCRIPT], env={**env, "DSAR_SCHEMA_UPGRADED": "1"}, cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    for attempt, delays in out["tasks"].items():
        # doubling from worker.retry_backoff_seconds, jitter up to twice as much
        low = out["min"] * 2 ** (int(attempt) - 1)
        assert all(low <= d <= 2 * low for d in delays), (attempt, delays)
    # Anything else keeps Dramatiq's own backoff by the message's retries (the middleware picks it: no delay here).
    assert out["no_attempt"] is None and out["other"] is None
