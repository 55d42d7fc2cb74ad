"""`dsar retention plan|run|report|confirm` over the sample data map (issue 19): one line and an exit code for bad
input, a plan that changes nothing, a run that removes exactly what is due and keeps a person's with an open
request, a second run that does nothing, and a report in each format (CSV parses, HTML escaped, JSON)."""

from __future__ import annotations

import csv
import io
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
import sqlalchemy as sa

from connectors.emails import normalise_email
from discovery.engine.ledger import RequestType, SubjectIdentity
from discovery.engine.runtime import Runtime
from discovery.engine.settings import load_settings
from sandbox.people import JANE
from tests.conftest import dsar_env, run_dsar, seed_accounts, write_config

pytestmark = pytest.mark.integration


@pytest.fixture
def cli(tmp_path: Path, pg_database: Any) -> dict[str, Any]:
    url = pg_database()
    engine = seed_accounts(url)
    config = write_config(tmp_path, f"sqlite:///{tmp_path / 'ledger.db'}")
    env = dsar_env(config, url)
    return {"env": env, "engine": engine, "config": config, "url": url}


def dsar(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return run_dsar(args, env, timeout=180)


def orders(engine: sa.Engine) -> list[int]:
    with engine.connect() as c:
        return sorted(c.execute(sa.text("SELECT id FROM orders")).scalars())


def write_request(cli: dict[str, Any], email: str, type_: RequestType = RequestType.ACCESS,
                  completed_at: datetime | None = None) -> None:
    """A request for `email` as intake writes one, open (no worker picks it up here); with `completed_at`, as the
    pipeline leaves one completed then."""
    from discovery.engine import db, pipeline
    from discovery.engine.ledger import RequestStatus

    rt = Runtime(load_settings(cli["config"], env=cli["env"]), env=cli["env"])
    try:
        db.upgrade(rt.engine)
        subject = normalise_email(email)
        with rt.sessions.begin() as s:
            req = pipeline.new_request(rt, type_, subject, rt.subject_hash(subject), completed_at or datetime.now(UTC))
            if completed_at is not None:
                req.status, req.completed_at, req.open_key = str(RequestStatus.COMPLETED), completed_at, None
            s.add(req)
            s.add(SubjectIdentity(request_id=req.id, type="email", value=subject, source="request", round=0))
    finally:
        rt.close()


def test_bad_input_is_one_line_and_an_exit_code(cli: dict[str, Any]) -> None:
    for args, code in ((["retention", "plan", "--system", "nosuch"], 4),
                       (["retention", "run", "--system", "nosuch"], 4),
                       (["retention", "confirm", "nosuch", "--note", "checked it"], 4),
                       (["retention", "confirm", "accounts", "--note", " "], 2)):
        out = dsar(args, cli["env"])
        assert out.returncode == code, (args, out.stderr)
        assert len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr, out.stderr
    out = dsar(["retention", "report", "--format", "pdf"], cli["env"])  # click's usage error
    assert out.returncode == 2 and "'pdf' is not one of" in out.stderr


def test_plan_run_and_a_second_run(cli: dict[str, Any]) -> None:
    before = orders(cli["engine"])  # three people, one order each past 5 years (ids 1, 4, 7)
    write_request(cli, JANE.email)  # Jane's stays while her request is open
    plan = dsar(["retention", "plan", "--system", "accounts", "--json"], cli["env"])
    assert plan.returncode == 0, plan.stderr
    rows = {r["rule"]: r for r in orjson.loads(plan.stdout)}
    assert rows["accounts.orders"]["due"] == 2 and rows["accounts.orders"]["kept_request"] == 1
    assert rows["accounts.orders"]["oldest_age_days"] >= 6 * 365 - 1
    assert rows["accounts.users"]["mechanism"] == "sweep-inactive" and rows["accounts.users"]["due"] == 0
    assert any(r["mechanism"] == "hold ends" for r in rows.values())
    assert orders(cli["engine"]) == before  # the plan changed nothing

    run = dsar(["retention", "run", "--json", "--batch", "1"], cli["env"])
    assert run.returncode == 0, run.stderr
    data = orjson.loads(run.stdout)
    assert data["rules"]["accounts.orders"]["changed"] == {"orders": 2}
    assert data["rules"]["accounts.orders"]["skipped"] == {"orders": {"kept: the person has an open request": 1}}
    assert "accounts.orders" in run.stderr  # progress on stderr
    assert orders(cli["engine"]) == [o for o in before if o not in (4, 7)]
    again = dsar(["retention", "run", "--json"], cli["env"])
    assert orjson.loads(again.stdout)["rules"]["accounts.orders"]["changed"] == {}

    assert dsar(["retention", "confirm", "accounts", "--note", "checked <the> backups: 30 days"],
                cli["env"]).returncode == 0
    report = dsar(["retention", "report", "--format", "json"], cli["env"])
    rep = orjson.loads(report.stdout)
    by_rule = {r["rule"]: r for r in rep["rules"]}
    assert by_rule["accounts.orders"]["last_run"]["changed"] == {}
    assert by_rule["accounts.orders"]["now"]["kept_request"] == 1 and not by_rule["accounts.orders"]["overdue"]
    assert by_rule["accounts.orders"]["texts"]["nb"].startswith("orders: slettes 5 år etter ordered_at")
    assert rep["last_run"]["status"] == "done" and rep["confirmations"][0]["note"].startswith("checked")

    table = list(csv.DictReader(io.StringIO(dsar(["retention", "report", "--format", "csv"], cli["env"]).stdout)))
    assert {r["rule"] for r in table} >= {"accounts.orders", "accounts.users"}
    assert next(r for r in table if r["rule"] == "accounts.orders")["kept_request"] == "1"
    page = dsar(["retention", "report", "--format", "html"], cli["env"]).stdout
    assert page.startswith("<!doctype html>") and "<the>" not in page


def test_a_run_in_progress_is_refused_and_a_stale_one_resumed(cli: dict[str, Any]) -> None:
    from discovery.schedule import retention

    settings = load_settings(cli["config"], env=cli["env"])
    rt = Runtime(settings, env=cli["env"])
    try:
        from discovery.engine import db

        db.upgrade(rt.engine)
        run_id, _, _, resumed = retention._start(rt, None, "test", "w1")  # a run left alive
        assert not resumed
        busy = dsar(["retention", "run"], cli["env"])
        assert busy.returncode == 2 and "in progress" in busy.stderr
        with rt.sessions.begin() as s:  # its process died ten minutes ago
            row = s.get(retention.RetentionRun, run_id)
            assert row is not None
            row.heartbeat_at = datetime.now(UTC) - retention.STALE * 2
    finally:
        rt.close()
    out = dsar(["retention", "run", "--json"], cli["env"])
    assert out.returncode == 0, out.stderr
    data = orjson.loads(out.stdout)
    assert data["resumed"] and data["run_id"] == run_id and data["rules"]["accounts.orders"]["changed"] == {"orders": 3}


def test_a_restricted_persons_records_are_kept_until_the_restriction_is_lifted(cli: dict[str, Any]) -> None:
    """Art. 18: a completed restriction request, not lifted since, keeps the person's records past retention
    (counted apart from holds and open requests); once a later lift completes they go like anyone's."""
    before = orders(cli["engine"])
    write_request(cli, JANE.email, RequestType.RESTRICTION, completed_at=datetime(2025, 1, 1, tzinfo=UTC))
    plan = dsar(["retention", "plan", "--system", "accounts", "--json"], cli["env"])
    rows = {r["rule"]: r for r in orjson.loads(plan.stdout)}
    assert (rows["accounts.orders"]["due"], rows["accounts.orders"]["kept_request"],
            rows["accounts.orders"]["kept_restricted"]) == (2, 0, 1), rows["accounts.orders"]
    run = orjson.loads(dsar(["retention", "run", "--json"], cli["env"]).stdout)
    assert run["rules"]["accounts.orders"]["skipped"] == {"orders": {"kept: processing restricted (Art. 18)": 1}}
    left = orders(cli["engine"])
    assert left == [o for o in before if o not in (4, 7)]
    table = list(csv.DictReader(io.StringIO(dsar(["retention", "report", "--format", "csv"], cli["env"]).stdout)))
    assert next(r for r in table if r["rule"] == "accounts.orders")["kept_restricted"] == "1"
    # an older lift changes nothing; a later one ends the restriction
    write_request(cli, JANE.email, RequestType.LIFT_RESTRICTION, completed_at=datetime(2024, 6, 1, tzinfo=UTC))
    assert orjson.loads(dsar(["retention", "run", "--json"], cli["env"]).stdout)[
        "rules"]["accounts.orders"]["changed"] == {}
    write_request(cli, JANE.email, RequestType.LIFT_RESTRICTION, completed_at=datetime(2025, 2, 1, tzinfo=UTC))
    last = orjson.loads(dsar(["retention", "run", "--json"], cli["env"]).stdout)
    assert last["rules"]["accounts.orders"]["changed"] == {"orders": 1}
    assert orders(cli["engine"]) == [o for o in left if o != 1]
