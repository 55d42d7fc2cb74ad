"""`dsar sweep-marketing` end to end: the CLI (embedded settings, in-process broker) against the vendor
simulators: it schedules Mautic-only erasures of the unsubscribed and the ended trials, nobody else, once."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import sqlalchemy as sa

from sandbox.launch import Sandbox
from sandbox.mautic import TRIAL_ACTIVE_EMAIL, TRIAL_ENDED_EMAIL, UNSUBSCRIBED_EMAIL
from sandbox.people import JANE, JOHN
from tests.conftest import ROOT, dsar_env, seed_accounts, write_config
from tests.helpers import rows

pytestmark = pytest.mark.e2e

DSAR = str(Path(sys.executable).parent / "dsar")


def dsar(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([DSAR, *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=180)


@pytest.fixture
def cli(tmp_path: Path) -> Iterator[dict[str, Any]]:
    with Sandbox(tmp_path / "sandbox") as sandbox:
        accounts = f"sqlite:///{tmp_path / 'accounts.db'}"
        engine = seed_accounts(accounts)
        ledger = f"sqlite:///{tmp_path / 'ledger.db'}"
        config = write_config(tmp_path, ledger)
        env = dsar_env(config, accounts, DSAR_DATA_MAP_PATH=str(sandbox.datamap_path), **sandbox.env())
        yield {"env": env, "sandbox": sandbox, "ledger": sa.create_engine(ledger), "accounts": engine}
        engine.dispose()


def test_sweep_marketing_schedules_the_two_people_once_and_the_scheduler_erases_them_in_mautic_only(
        cli: dict[str, Any]) -> None:
    env, sandbox = cli["env"], cli["sandbox"]
    mautic = sandbox.sims["mautic"]
    others_before = {p: sandbox.holdings(p) for p in (JANE.email, JOHN.email, TRIAL_ACTIVE_EMAIL)}
    users_before = rows(cli["accounts"], "SELECT * FROM users ORDER BY id")

    first = dsar(["sweep-marketing", "--json"], env)
    assert first.returncode == 0, first.stderr
    summary = orjson.loads(first.stdout)
    assert (summary["systems"], summary["unsubscribed"], summary["trials_ended"]) == (["mautic"], 1, 1)
    assert (summary["scheduled"], summary["already_scheduled"]) == (2, 0)
    actions = rows(cli["ledger"], "SELECT kind, subject_email, status, details FROM scheduled_actions ORDER BY id")
    assert {(a["kind"], a["subject_email"]) for a in actions} == {
        ("newsletter_erasure", UNSUBSCRIBED_EMAIL), ("trial_erasure", TRIAL_ENDED_EMAIL)}
    assert all(orjson.loads(a["details"])["systems"] == ["mautic"] for a in actions)
    created = rows(cli["ledger"], "SELECT count(*) AS n FROM audit_events WHERE event = 'schedule.created'")
    assert created[0]["n"] == 2

    again = dsar(["sweep-marketing"], env)
    assert again.returncode == 0, again.stderr
    assert "erasures scheduled now: 0; already scheduled: 2" in again.stdout
    assert UNSUBSCRIBED_EMAIL not in again.stdout and TRIAL_ENDED_EMAIL not in again.stdout
    assert len(rows(cli["ledger"], "SELECT id FROM scheduled_actions")) == 2

    ran = dsar(["scheduler", "--once", "--json"], env)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    result = orjson.loads(ran.stdout)
    assert result["requests"] == 2 and len(result["requests_created"]) == 2
    assert set(result["request_status"].values()) == {"awaiting_manual"}  # Mautic's residue step

    # Erased in Mautic; every request was limited to Mautic and asked nothing else.
    assert mautic.contact_ids(UNSUBSCRIBED_EMAIL) == [] and mautic.contact_ids(TRIAL_ENDED_EMAIL) == []
    requests = rows(cli["ledger"], "SELECT id, systems FROM requests")
    assert [orjson.loads(r["systems"]) for r in requests] == [["mautic"], ["mautic"]]
    tasks = rows(cli["ledger"], "SELECT DISTINCT system FROM tasks")
    hits = rows(cli["ledger"], "SELECT DISTINCT system FROM system_hits")
    assert [t["system"] for t in tasks] == ["mautic"] and [h["system"] for h in hits] == ["mautic"]
    # Nobody else changed: Jane, John, the running trial (manually blocked, not unsubscribed), the account DB.
    assert {p: sandbox.holdings(p) for p in others_before} == others_before
    assert rows(cli["accounts"], "SELECT * FROM users ORDER BY id") == users_before

    # Erased people are no longer found: a later sweep schedules nothing.
    final = orjson.loads(dsar(["sweep-marketing", "--json"], env).stdout)
    assert (final["unsubscribed"], final["trials_ended"], final["scheduled"]) == (0, 0, 0)


def test_an_erasure_is_cancelled_when_the_person_subscribed_again_before_it_fell_due(
        cli: dict[str, Any]) -> None:
    env, sandbox = cli["env"], cli["sandbox"]
    mautic = sandbox.sims["mautic"]
    assert dsar(["sweep-marketing"], env).returncode == 0
    [kari] = mautic.contact_ids(UNSUBSCRIBED_EMAIL)
    mautic.resubscribe(kari)

    ran = orjson.loads(dsar(["scheduler", "--once", "--json"], env).stdout)
    assert (ran["requests"], ran["cancelled"]) == (1, 1)
    assert mautic.contact_ids(UNSUBSCRIBED_EMAIL) == [kari]
    [cancelled] = rows(cli["ledger"], "SELECT kind, details FROM scheduled_actions WHERE status = 'cancelled'")
    assert cancelled["kind"] == "newsletter_erasure"
    assert "no longer unsubscribed in mautic" in orjson.loads(cancelled["details"])["cancel_reason"]


def test_request_system_option_limits_the_plan_and_refuses_unknown_systems(cli: dict[str, Any]) -> None:
    env = cli["env"]
    plan = dsar(["request", "erasure", "--email", JANE.email, "--system", "mautic", "--system", "matomo",
                 "--dry-run", "--json"], env)
    assert plan.returncode == 0, plan.stderr
    data = orjson.loads(plan.stdout)
    assert data["systems"] == ["mautic", "matomo"]
    acting = {s["system"] for s in data["plan"] if s["action"] != "skip"}
    skipped = {s["system"] for s in data["plan"] if s["reason"] == "outside this request's scope"}
    assert acting == {"mautic", "matomo"} and skipped == {"accounts", "freshchat", "salesmanago"}

    bad = dsar(["request", "erasure", "--email", JANE.email, "--system", "mautic", "--system", "crm"], env)
    assert bad.returncode == 2
    assert "unknown or disabled system(s): crm" in bad.stderr
    assert rows(cli["ledger"], "SELECT id FROM requests") == []
