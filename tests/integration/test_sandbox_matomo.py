"""The Matomo connector against MatomoSim over a real socket."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator
from datetime import UTC, date, datetime
from typing import Any

import pytest
import requests

from connectors.base import ConnectorContext, Identities, Identity, IdentityType, PermanentError, UnsupportedAction
from connectors.matomo import MatomoConnector
from sandbox.matomo import MSG_TOKEN_INSECURE, MatomoSim
from sandbox.people import DECOY_EMAIL, JANE, JOHN
from sandbox.server import Served


@pytest.fixture
def sim() -> MatomoSim:
    sim = MatomoSim()
    sim.seed_demo()
    return sim


@pytest.fixture
def served(sim: MatomoSim) -> Iterator[Served]:
    with Served(sim.app) as served:
        yield served


def connect(sim: MatomoSim, served: Served, env: dict[str, str] | None = None, **overrides: Any) -> MatomoConnector:
    settings = {**sim.settings(served.url), **overrides}
    return MatomoConnector.from_settings("matomo", settings, ConnectorContext(env=env or sim.env()))


def jane() -> Identities:
    return Identities([
        Identity(IdentityType.EMAIL, JANE.email),
        Identity(IdentityType.MATOMO_VISITOR_ID, JANE.matomo_visitor_id, source="accounts"),
    ])


def visitor_ids(person_email: str, prelogin: str | None) -> set[str]:
    ids = {hashlib.sha1(person_email.encode()).hexdigest()[:16]}
    return ids | ({prelogin} if prelogin else set())


def test_locate_finds_all_of_janes_visits_and_none_of_johns(sim: MatomoSim, served: Served) -> None:
    connector = connect(sim, served)

    hits = connector.locate(jane())
    records = [r for r in connector.export(jane()) if r.entity == "log_visit"]

    assert hits.found and hits.counts == {"visits": sim.holdings(JANE.email)["visits"]} == {"visits": 4}
    assert {r.fields["idvisitor"] for r in records} == visitor_ids(JANE.email, JANE.matomo_visitor_id)
    assert {r.fields.get("user_id") for r in records} == {JANE.email, None}
    assert not {r.fields["idvisitor"] for r in records} & visitor_ids(JOHN.email, JOHN.matomo_visitor_id)
    assert not {r.fields["idvisitor"] for r in records} & visitor_ids(DECOY_EMAIL, None)
    hashed = hashlib.sha1(JANE.email.encode()).hexdigest()[:16]
    assert [(i.type, i.value) for i in hits.learned] == [(IdentityType.MATOMO_VISITOR_ID, hashed)]


def test_email_alone_misses_the_prelogin_visits(sim: MatomoSim, served: Served) -> None:
    hits = connect(sim, served).locate(Identities([Identity(IdentityType.EMAIL, JANE.email)]))
    assert hits.counts == {"visits": 2}  # the anonymous ones need the visitor id the account DB stores


def test_truncated_find_is_completed_through_live_paging(sim: MatomoSim, served: Served) -> None:
    hits = connect(sim, served, filter_limit=2, page_size=1).locate(jane())

    assert hits.counts == {"visits": 4}
    assert sim.calls[:2] == ["PrivacyManager.findDataSubjects", "SitesManager.getSitesIdWithAdminAccess"]
    assert sim.calls.count("Live.getLastVisitsDetails") >= 3


def test_export_holds_every_log_table_of_her_visits(sim: MatomoSim, served: Served) -> None:
    held = sim.holdings(JANE.email)

    records = list(connect(sim, served, chunk_size=3).export(jane()))

    counts: dict[str, int] = {}
    for record in records:
        counts[record.entity] = counts.get(record.entity, 0) + 1
    assert counts["log_visit"] == held["visits"]
    assert counts["log_link_visit_action"] == held["actions"]
    assert counts["log_conversion"] == held["conversions"]
    assert counts["log_action_log_link_visit_action_idaction_url"] >= 1
    assert sim.calls.count("PrivacyManager.exportDataSubjects") == 2  # 4 visits in chunks of 3


def test_erase_leaves_nothing_of_jane_and_everything_of_the_others(sim: MatomoSim, served: Served) -> None:
    held, john, decoy = sim.holdings(JANE.email), sim.holdings(JOHN.email), sim.holdings(DECOY_EMAIL)

    receipt = connect(sim, served).erase(jane())

    assert sim.holdings(JANE.email) == {}
    assert receipt.changed["log_visit"] == held["visits"]
    assert receipt.changed["log_link_visit_action"] == held["actions"]
    assert receipt.changed["log_conversion"] == held["conversions"]
    assert sim.holdings(JOHN.email) == john and sim.holdings(DECOY_EMAIL) == decoy
    # deleteDataSubjects invalidates the visits' dates itself (PrivacyManager/Model/DataSubjects.php L121-146):
    # no manual step any more (until issue 18 one asked for core:invalidate-report-data), and the receipt says so.
    assert receipt.manual_steps == []
    assert sim.invalidated == {1: {date(2024, 5, 1), date(2024, 5, 2)}, 2: {date(2024, 5, 2)}}
    assert any("no manual step is needed" in d for d in receipt.details)
    assert not connect(sim, served).locate(jane()).found


def test_token_in_the_url_is_rejected_like_a_secure_only_token(sim: MatomoSim, served: Served) -> None:
    url = f"{served.url}/index.php"
    query = {"module": "API", "method": "API.getMatomoVersion", "format": "JSON"}

    in_url = requests.post(url, params={**query, "token_auth": sim.TOKEN}, timeout=5)
    in_body = requests.post(url, params=query, data={"token_auth": sim.TOKEN}, timeout=5)

    assert in_url.status_code == 401
    assert in_url.json() == {"result": "error", "message": MSG_TOKEN_INSECURE}
    assert in_body.status_code == 200 and in_body.json() == {"value": MatomoSim.VERSION}


def test_check_passes_with_the_admin_token(sim: MatomoSim, served: Served) -> None:
    assert connect(sim, served).check().ok


def test_wrong_token_is_a_permanent_error(sim: MatomoSim, served: Served) -> None:
    connector = connect(sim, served, env={MatomoSim.TOKEN_ENV: "not-a-token"})

    health = connector.check()
    with pytest.raises(PermanentError, match=r"PrivacyManager\.findDataSubjects.*HTTP 401"):
        connector.locate(jane())

    assert not health.ok and "401" in health.problems[0]


def test_view_only_token_fails_the_check_and_the_gdpr_calls(sim: MatomoSim, served: Served) -> None:
    connector = connect(sim, served, env={MatomoSim.TOKEN_ENV: MatomoSim.VIEW_TOKEN})

    health = connector.check()
    with pytest.raises(PermanentError, match="admin"):
        connector.locate(jane())

    assert not health.ok and "admin access to no site" in health.problems[0]


def test_restrict_is_unsupported(sim: MatomoSim, served: Served) -> None:
    with pytest.raises(UnsupportedAction):
        connect(sim, served).restrict(jane())
    assert sim.calls == []


def test_a_visitor_id_shared_with_john_teaches_nothing_and_his_visit_survives(sim: MatomoSim, served: Served) -> None:
    sim.seed_shared()  # John logged in on Jane's computer: her pre-login visitor id, his userId
    john = sim.holdings(JOHN.email)
    connector = connect(sim, served)

    hits = connector.locate(jane())
    assert hits.counts == {"visits": 4}  # as before: the shared visit is not hers
    assert hits.skipped == {"visits": {"visit of another userId on a shared visitor id": 1}}
    assert all(i.type == IdentityType.MATOMO_VISITOR_ID and i.via for i in hits.learned)
    assert JOHN.email not in {i.value for i in hits.learned}

    receipt = connector.erase(jane())
    assert sim.holdings(JANE.email) == {} and sim.holdings(JOHN.email) == john
    assert receipt.skipped == hits.skipped


@pytest.mark.parametrize("user_id", ["jane+news@example.com", "100%ab@example.com"])
def test_a_user_id_with_plus_or_percent_is_found_and_erased(sim: MatomoSim, served: Served, user_id: str) -> None:
    # The sim decodes segment values three times, as Matomo does (core/Segment.php L149-177, SegmentExpression.php
    # L120, L140). The visit's visitor id is not sha1(userId) (enable_userid_overwrites_visitorid=0), so only
    # the userId condition can find it: before issue 18 it was searched as `jane news@...` and never found.
    idvisit = sim.add_visit(1, "0123456789abcdef", user_id, datetime(2024, 5, 9, 10, 0, tzinfo=UTC))
    connector = connect(sim, served)
    subject = Identities([Identity(IdentityType.EMAIL, user_id)])

    assert connector.locate(subject).counts == {"visits": 1}
    assert connector.erase(subject).changed["log_visit"] == 1
    assert idvisit not in sim._visits and sim.holdings(JANE.email)["visits"] == 4


def test_admin_sites_answered_as_an_object(sim: MatomoSim, served: Served) -> None:
    sim.keep_admin_row(1)  # a super user once admin of site 1: [1] + [1, 2] -> array_unique keeps keys 0 and 2
    query = {"module": "API", "method": "SitesManager.getSitesIdWithAdminAccess", "format": "JSON"}
    raw = requests.post(f"{served.url}/index.php", params=query, data={"token_auth": sim.TOKEN}, timeout=5)
    assert raw.json() == {"0": 1, "2": 2}
    connector = connect(sim, served, id_sites="all", filter_limit=2, page_size=1)

    assert connect(sim, served, id_sites="1,2").check().ok
    assert connector.locate(jane()).counts == {"visits": 4}  # `all` resolved through that object


class SomeoneElseFirst:
    """In front of the simulator: the first call of `method` is carried out once unseen before it is answered, as
    if another admin ran it in Matomo's own GDPR tool a moment earlier; the real reply then says what that left."""

    def __init__(self, app: Any, method: str) -> None:
        self.app, self.method, self.done = app, method, False

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        if not self.done and f"method={self.method}" in environ.get("QUERY_STRING", ""):
            self.done = True
            body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
            list(self.app({**environ, "wsgi.input": io.BytesIO(body)}, lambda *_a, **_k: None))
            environ = {**environ, "wsgi.input": io.BytesIO(body)}
        return self.app(environ, start_response)


def test_a_delete_whose_visits_went_meanwhile_is_done_and_says_so(sim: MatomoSim) -> None:
    # Issue 10 point 9: deleteDataSubjects answers zero rows for visits already deleted (the sandbox, as Matomo);
    # a fresh search finds them gone, which is what the erasure is for: done, and the receipt says why no row changed.
    with Served(SomeoneElseFirst(sim.app, "PrivacyManager.deleteDataSubjects")) as served:
        connector = connect(sim, served)
        receipt = connector.erase(jane())
        again = connector.locate(jane())
        connector.close()
    assert receipt.changed == {}
    assert any("were already gone when deleteDataSubjects ran" in line for line in receipt.details)
    assert not again.found
