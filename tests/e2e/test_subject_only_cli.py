"""The CLI on a person who shares a FreshChat conversation with someone else: the dry run refuses the
erasure there (exit 1) until --confirm-others gives a reason; status shows where each identifier came from."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from sandbox.launch import Sandbox
from sandbox.people import JANE, JOHN
from tests.conftest import dsar_env, run_dsar, seed_accounts, write_config

pytestmark = pytest.mark.e2e


@pytest.fixture
def cli(tmp_path: Path) -> Iterator[dict[str, Any]]:
    with Sandbox(tmp_path / "sandbox") as sandbox:
        sandbox.sims["freshchat"].seed_shared()  # type: ignore[attr-defined]
        accounts = f"sqlite:///{tmp_path / 'accounts.db'}"
        seed_accounts(accounts).dispose()
        config = write_config(tmp_path, f"sqlite:///{tmp_path / 'ledger.db'}")
        env = dsar_env(config, accounts, DSAR_DATA_MAP_PATH=str(sandbox.datamap_path), **sandbox.env())
        yield {"env": env, "sandbox": sandbox}


def test_dry_run_refuses_until_confirmed_and_status_shows_provenance(cli: dict[str, Any]) -> None:
    env = cli["env"]
    refused = run_dsar(["request", "erasure", "--email", JANE.email, "--dry-run"], env)
    assert refused.returncode == 1, refused.stderr
    assert "Refused: freshchat" in refused.stderr and "--confirm-others" in refused.stderr
    assert "refused" in refused.stdout and JOHN.email not in refused.stdout + refused.stderr
    assert "(matched directly), column" in refused.stdout  # provenance of the SQL identifiers

    as_json = run_dsar(["request", "erasure", "--email", JANE.email, "--dry-run", "--json"], env)
    assert as_json.returncode == 1
    data = orjson.loads(as_json.stdout)
    assert [r["system"] for r in data["refused"]] == ["freshchat"]
    assert all(i["via"] for i in data["identifiers"] if i["source"] != "request")

    confirmed = run_dsar(["request", "erasure", "--email", JANE.email, "--dry-run",
                          "--confirm-others", "John asked for the shared chat to go too"], env)
    assert confirmed.returncode == 0, confirmed.stderr
    assert "Refused" not in confirmed.stderr

    too_short = run_dsar(["request", "erasure", "--email", JANE.email, "--confirm-others", " x "], env)
    assert too_short.returncode == 2 and "needs a reason" in too_short.stderr

    access = run_dsar(["request", "access", "--email", JANE.email, "--json"], env)
    assert access.returncode == 0, access.stderr
    status = orjson.loads(run_dsar(["status", orjson.loads(access.stdout)["id"], "--json"], env).stdout)
    learned = [i for i in status["identifiers"] if i["source"] != "request"]
    assert learned and all(i["via"].startswith(f"{i['source']}: ") for i in learned)
    human = run_dsar(["status", status["id"]], env)
    assert "Identifiers:" in human.stdout and "(matched directly)" in human.stdout
