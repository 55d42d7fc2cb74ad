"""`dsar confirm` end to end: the CLI in a subprocess, the vendor simulators served from this test process."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from sandbox.launch import Sandbox
from sandbox.people import JANE
from tests.conftest import dsar_env, run_dsar, seed_accounts, write_config

pytestmark = pytest.mark.e2e


@pytest.fixture
def cli(tmp_path: Path) -> Iterator[dict[str, Any]]:
    with Sandbox(tmp_path / "sandbox") as sandbox:
        accounts = f"sqlite:///{tmp_path / 'accounts.db'}"
        seed_accounts(accounts).dispose()
        config = write_config(tmp_path, f"sqlite:///{tmp_path / 'ledger.db'}")
        env = dsar_env(config, accounts, DSAR_DATA_MAP_PATH=str(sandbox.datamap_path), **sandbox.env())
        yield {"env": env, "sandbox": sandbox}


def one_line_error(result: subprocess.CompletedProcess[str], code: int, text: str) -> None:
    assert result.returncode == code, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dsar: ") and text in lines[0], result.stderr


def status(env: dict[str, str], request_id: str) -> dict[str, Any]:
    result = run_dsar(["status", request_id, "--json"], env)
    assert result.returncode == 0, result.stderr
    return orjson.loads(result.stdout)  # type: ignore[no-any-return]


def test_confirm_completes_the_manual_steps_and_refuses_bad_input(cli: dict[str, Any]) -> None:
    env = cli["env"]
    erasure = run_dsar(["request", "erasure", "--email", JANE.email, "--json"], env)
    assert erasure.returncode == 0, erasure.stderr
    data = orjson.loads(erasure.stdout)
    request_id = data["id"]
    assert data["status"] == "awaiting_manual"
    awaiting = {t["system"] for t in data["tasks"] if t["status"] == "awaiting_manual"}
    # FreshChat: Forget the contact (no user delete); Matomo needs none (deleteDataSubjects invalidates reports)
    assert awaiting == {"freshchat", "mautic"}
    assert {t["system"] for t in data["tasks"]} == {"accounts", "freshchat", "mautic", "salesmanago", "matomo"}

    one_line_error(run_dsar(["confirm", "no-such-request", "--system", "mautic", "--note", "done"], env),
                   4, "unknown request no-such-request")
    one_line_error(run_dsar(["confirm", request_id, "--system", "salesmanago", "--note", "done"], env),
                   2, "no task awaiting a manual step in system 'salesmanago'")
    one_line_error(run_dsar(["confirm", request_id, "--system", "billing", "--note", "done"], env),
                   2, "system 'billing'")
    one_line_error(run_dsar(["confirm", request_id, "--system", "mautic", "--note", "  "], env),
                   2, "a note saying what was done is required")
    missing_note = run_dsar(["confirm", request_id, "--system", "mautic"], env)
    assert missing_note.returncode == 2 and "--note" in missing_note.stderr  # click's usage error
    assert status(env, request_id)["status"] == "awaiting_manual"  # nothing above changed anything

    first = run_dsar(["confirm", request_id, "--system", "mautic", "--actor", "dpo",
                      "--note", "Deleted the NULL-lead email_stats, page_hits and form_submissions rows"], env)
    assert first.returncode == 0, first.stderr
    assert "confirmed 1 task(s) of mautic" in first.stderr
    midway = status(env, request_id)
    assert midway["status"] == "awaiting_manual"  # FreshChat's step is still open
    # status: the step that was confirmed, by whom, when, with the note; the next action is the exact command.
    (confirmed,) = midway["confirmed"]
    assert confirmed == {"system": "mautic", "action": "erase", "by": "dpo", "at": confirmed["at"],
                         "note": "Deleted the NULL-lead email_stats, page_hits and form_submissions rows"}
    confirm_next = f'dsar confirm {request_id} --system freshchat --note "<what was done>"'
    assert confirm_next in midway["next_actions"]
    human = run_dsar(["status", request_id], env)
    assert human.returncode == 0, human.stderr
    assert (f"Confirmed: mautic erase by dpo at {confirmed['at'][:16].replace('T', ' ')}: Deleted the NULL-lead "
            "email_stats, page_hits and form_submissions rows") in human.stdout.splitlines()
    assert f"Next: {confirm_next}" in human.stdout.splitlines()
    assert "Next: dsar confirm" not in human.stdout.replace(confirm_next, "")  # mautic's is not asked again

    again = run_dsar(["confirm", request_id, "--system", "mautic", "--note", "twice"], env)
    one_line_error(again, 2, "no task awaiting a manual step in system 'mautic'")

    last = run_dsar(["confirm", request_id, "--system", "freshchat", "--actor", "dpo",
                     "--note", "Forgot the contact in FreshChat (Contacts > Forget)"], env)
    assert last.returncode == 0, last.stderr
    assert "request: completed" in last.stderr
    final = status(env, request_id)
    assert final["status"] == "completed" and final["bundle"]
    assert {t["status"] for t in final["tasks"]} == {"done"}
