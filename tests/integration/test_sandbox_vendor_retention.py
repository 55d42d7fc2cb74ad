"""Vendor retention against the simulators (issue 19 point 4): Matomo visits past 5 years are deleted through
findDataSubjects + deleteDataSubjects, young ones and an open-request subject's are kept, a second run does
nothing, an interrupted run resumes without deleting anything twice; and `dsar retention plan|run|report` over the
sandbox world's data map (the project's vendor rules: Matomo run by dsar, FreshChat until asked, SALESmanago a
setting confirmed by hand)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from connectors.base import ConnectorContext, Identities, Identity, IdentityType
from connectors.matomo import MatomoConnector
from connectors.retention import Keep, RetentionRule
from discovery.engine import pipeline
from discovery.engine.ledger import RequestType, SubjectIdentity
from sandbox.launch import Sandbox
from sandbox.matomo import MatomoSim, user_id_hash
from sandbox.people import JANE
from sandbox.server import Served
from tests.conftest import SECRET, dsar_env, run_dsar
from tests.helpers import sandbox_world

pytestmark = pytest.mark.integration

NOW = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)
RULE = {"entity": "visits", "after": "5 years", "by": "dsar", "reason": "the privacy policy"}
STRANGER = "0123456789abcdef"


@pytest.fixture
def sim() -> MatomoSim:
    sim = MatomoSim()
    sim.seed_demo()  # every demo visit is from 2024: young
    return sim


@pytest.fixture
def served(sim: MatomoSim) -> Iterator[Served]:
    with Served(sim.app) as served:
        yield served


def connect(sim: MatomoSim, served: Served, **overrides: Any) -> MatomoConnector:
    settings = {**sim.settings(served.url), "retention_rules": [RULE], **overrides}
    return MatomoConnector.from_settings("matomo", settings, ConnectorContext(env=sim.env()))


def jane_keep() -> Keep:
    return Keep(identities=Identities([Identity(IdentityType.EMAIL, JANE.email),
                                       Identity(IdentityType.MATOMO_VISITOR_ID, JANE.matomo_visitor_id)]))


def seed_old(sim: MatomoSim) -> dict[str, set[int]]:
    """Old visits of a stranger (both sites), Jane's (userId and her pre-login id), and the two days around the
    boundary: 2021-11-30 + 5 years is 2026-11-30, past at NOW (due); 2021-12-01 + 5 years is today (kept)."""
    due = {sim.add_visit(site, STRANGER, None, datetime(2019, 1, 1 + n, 9, tzinfo=UTC))
           for n in range(5) for site in (1, 2)}
    due.add(sim.add_visit(1, STRANGER, None, datetime(2021, 11, 30, 23, 0, tzinfo=UTC)))
    last_day = {sim.add_visit(1, STRANGER, None, datetime(2021, 12, 1, 0, 0, tzinfo=UTC))}
    janes = {sim.add_visit(1, user_id_hash(JANE.email), JANE.email, datetime(2019, 3, 3, tzinfo=UTC)),
             sim.add_visit(2, str(JANE.matomo_visitor_id), None, datetime(2019, 3, 4, tzinfo=UTC))}
    return {"due": due, "last_day": last_day, "janes": janes}


def present(sim: MatomoSim) -> set[int]:
    return set(sim._visits)


def rule(conn: MatomoConnector) -> RetentionRule:
    (only,) = conn.retention_rules()
    return only


def test_old_visits_go_young_ones_and_an_open_requests_stay_and_a_second_run_does_nothing(
        sim: MatomoSim, served: Served) -> None:
    seeded = seed_old(sim)
    conn = connect(sim, served)
    before = present(sim)

    due = conn.retention_due(rule(conn), NOW, jane_keep())
    assert (due.due, due.kept_request) == (11, 2)
    assert due.oldest == datetime(2019, 1, 1, 9, 1, tzinfo=UTC)  # the sim: a page a minute after the start
    receipt = conn.retention_apply(rule(conn), NOW, jane_keep(), batch=3)

    assert present(sim) == before - seeded["due"]
    assert seeded["janes"] | seeded["last_day"] <= present(sim)
    assert receipt.changed["log_visit"] == 11
    assert receipt.skipped == {"visits": {"kept: the person has an open request": 2}}
    assert all(len(call) <= 3 for call in sim.delete_requests)
    assert JANE.email not in " ".join(receipt.details)

    calls = len(sim.delete_requests)
    again = conn.retention_apply(rule(conn), NOW, jane_keep())
    assert again.changed == {} and len(sim.delete_requests) == calls
    # her request done: her old visits go at the next run
    assert conn.retention_apply(rule(conn), NOW, Keep()).changed["log_visit"] == 2
    assert not seeded["janes"] & present(sim)


def test_an_interrupted_run_resumes_without_deleting_anything_twice(sim: MatomoSim, served: Served) -> None:
    seeded = seed_old(sim)
    conn = connect(sim, served)

    class Killed(Exception):
        pass

    cursors: list[Any] = []

    def die_after_two(cursor: Any, _receipt: Any) -> None:
        cursors.append(cursor)
        if len(cursors) == 2:
            raise Killed

    with pytest.raises(Killed):
        conn.retention_apply(rule(conn), NOW, jane_keep(), batch=4, checkpoint=die_after_two)
    assert cursors == [{"deleted": 4}, {"deleted": 8}]

    resumed: list[Any] = []
    receipt = conn.retention_apply(rule(conn), NOW, jane_keep(), batch=4, cursor=cursors[-1],
                                   checkpoint=lambda c, _r: resumed.append(c))
    asked = [pair for call in sim.delete_requests for pair in call]
    assert len(asked) == len(set(asked)) == 11  # each due visit asked for once, over both attempts
    assert receipt.changed["log_visit"] == 3 and resumed == [{"deleted": 11}]
    assert not seeded["due"] & present(sim)


def test_more_due_than_one_answer_holds(sim: MatomoSim, served: Served) -> None:
    for n in range(450):  # findDataSubjects answers 401 at most
        sim.add_visit(1, STRANGER, None, datetime(2018, 1, 1, tzinfo=UTC) + timedelta(minutes=n * 10))
    conn = connect(sim, served)
    assert conn.retention_due(rule(conn), NOW, Keep()).due == 450  # counted past the cap through Live
    assert conn.retention_apply(rule(conn), NOW, Keep()).changed["log_visit"] == 450
    assert conn.retention_due(rule(conn), NOW, Keep()).due == 0


def test_check_tries_the_age_segment(sim: MatomoSim, served: Served) -> None:
    assert connect(sim, served).check().ok


# -- dsar retention over the sandbox world ------------------------------------------------------------------


def seed_world(sandbox: Sandbox) -> None:
    matomo = sandbox.sims["matomo"]
    assert isinstance(matomo, MatomoSim)
    seed_old(matomo)


def test_retention_plan_run_report_over_the_sandbox_world(tmp_path: Path) -> None:
    with sandbox_world(tmp_path, now=lambda: NOW, seed=seed_world) as world:
        rt, sandbox = world["rt"], world["sandbox"]
        with rt.sessions.begin() as s:  # an open access request for Jane, as intake writes one
            req = pipeline.new_request(rt, RequestType.ACCESS, JANE.email, rt.subject_hash(JANE.email), NOW)
            s.add(req)
            s.add(SubjectIdentity(request_id=req.id, type="email", value=JANE.email, source="request", round=0))
            s.add(SubjectIdentity(request_id=req.id, type="matomo_visitor_id", value=JANE.matomo_visitor_id,
                                  source="accounts", round=1))
        env = dsar_env(tmp_path / "dsar.toml", f"sqlite:///{tmp_path / 'accounts.db'}",
                       DSAR_DATA_MAP_PATH=str(sandbox.datamap_path), DSAR_NOW=NOW.isoformat(),
                       DSAR_SECRET_KEY=SECRET, **sandbox.env())

        def dsar(*args: str) -> subprocess.CompletedProcess[str]:
            out = run_dsar(list(args), env, timeout=180)
            assert out.returncode == 0, out.stderr
            return out

        plan = {r["rule"]: r for r in orjson.loads(dsar("retention", "plan", "--json").stdout)}
        assert plan["matomo.visits"]["mechanism"] == "retention run"
        assert (plan["matomo.visits"]["due"], plan["matomo.visits"]["kept_request"]) == (11, 2)
        chat = plan["freshchat.conversations (on request)"]
        assert chat["mechanism"] == "on request" and chat["period"] is None and "due" not in chat
        sm = plan["salesmanago.contact (vendor setting (confirmed by hand))"]
        assert sm["confirm_by_hand"] and "withdraw your consent" in sm["text"]

        run = orjson.loads(dsar("retention", "run", "--system", "matomo", "--json", "--batch", "5").stdout)
        assert run["rules"]["matomo.visits"]["changed"]["log_visit"] == 11
        assert run["rules"]["matomo.visits"]["skipped"] == {"visits": {"kept: the person has an open request": 2}}
        again = orjson.loads(dsar("retention", "run", "--system", "matomo", "--json").stdout)
        assert again["rules"]["matomo.visits"]["changed"] == {}

        dsar("retention", "confirm", "salesmanago", "--note", "opted-out contacts removed weekly")
        report = {r["rule"]: r for r in orjson.loads(dsar("retention", "report", "--format", "json").stdout)["rules"]}
        assert report["matomo.visits"]["now"]["due"] == 0 and not report["matomo.visits"]["overdue"]
        assert report["matomo.visits"]["texts"]["nb"].startswith("visits: slettes 5 år etter besøkets siste handling")
        assert report["salesmanago.contact (vendor setting (confirmed by hand))"]["confirmed"]["note"].startswith(
            "opted-out")
        assert not report["freshchat.conversations (on request)"]["overdue"]
        assert report["freshchat.conversations (on request)"]["texts"]["nb"].startswith(
            "conversations: lagres til du ber oss slette det")
