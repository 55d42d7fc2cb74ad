"""Contract tests for the Matomo connector: every call is a form POST to index.php with
module/method/format in the query and token_auth only in the body (vendor-apis.md 4.1)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qsl, unquote_plus, urlsplit

import pytest
import responses
from responses import matchers

from connectors.base import (
    ConnectorContext,
    Identities,
    Identity,
    IdentityType,
    PermanentError,
    TransientError,
    UnsupportedAction,
)
from connectors.matomo import MatomoConnector
from tests.contract.conftest import FAST_RETRY

BASE = "https://analytics.example.com"
URL = f"{BASE}/index.php"
TOKEN = "matomo-token-123"  # DSAR_MATOMO_TOKEN in the contract ctx
JANE = "jane.doe@example.com"
JANE_PRELOGIN = "5f1e3d2c1b0a9988"  # her _pk_id visitor id, learned from the account database
JANE_HASH = hashlib.sha1(JANE.encode()).hexdigest()[:16]  # Matomo: substr(sha1(userId), 0, 16)
JANE_SEGMENT = ",".join(sorted([f"visitorId=={JANE_HASH}", f"visitorId=={JANE_PRELOGIN}"]))
# The userId value is url-encoded three times: Matomo decodes the whole segment (core/Segment.php L149-177), each
# condition (core/Segment/SegmentExpression.php L120) and each value (L140); matomo-org/matomo @ f09912cb, and
# PR #13481. (Until issue 18 this was encoded once, `jane.doe%40example.com`, as the connector sent it.)
JANE_SEGMENT = f"userId==jane.doe%252540example.com,{JANE_SEGMENT}"


@pytest.fixture
def api(vendor: responses.RequestsMock) -> Iterator[responses.RequestsMock]:
    """The vendor mock, plus: no request may carry token_auth in its URL, and every one carries it in the body."""
    yield vendor
    for call in vendor.calls:
        url, body = str(call.request.url), body_text(call)
        assert call.request.method == "POST"
        assert "token_auth" not in dict(parse_qsl(urlsplit(url).query))
        assert TOKEN not in url
        assert dict(parse_qsl(body))["token_auth"] == TOKEN


def body_text(call: Any) -> str:
    body = call.request.body or ""
    return body.decode() if isinstance(body, bytes) else str(body)


def settings(**overrides: Any) -> dict[str, Any]:
    return {"base_url": BASE, "token_env": "DSAR_MATOMO_TOKEN", **overrides}


def make(ctx: ConnectorContext, **overrides: Any) -> MatomoConnector:
    return MatomoConnector.from_settings("matomo", settings(**overrides), ctx, retry=FAST_RETRY)


def expect(
    api: responses.RequestsMock, method: str, body: dict[str, str], payload: Any, status: int = 200,
    headers: dict[str, str] | None = None,
) -> None:
    api.add(
        responses.POST,
        URL,
        json=payload,
        status=status,
        headers=headers,
        match=[
            matchers.query_param_matcher({"module": "API", "method": method, "format": "JSON"}),
            matchers.urlencoded_params_matcher({"token_auth": TOKEN, **body}),
            matchers.header_matcher({"Content-Type": "application/x-www-form-urlencoded"}),
        ],
    )


def visit(idvisit: int, idsite: int = 1, visitor_id: str = JANE_HASH, user_id: str | None = JANE,
          when: str = "2024-05-02 14:19:37") -> dict[str, Any]:
    """A findDataSubjects / Live row with the columns findDataSubjects keeps (vendor-apis.md 4.8)."""
    return {
        "lastActionDateTime": when, "idVisit": idvisit, "idSite": idsite, "siteName": "Shop",
        "visitorId": visitor_id, "visitIp": "203.0.113.0", "userId": user_id, "deviceType": "Desktop",
        "deviceModel": "Generic Desktop", "deviceTypeIcon": "plugins/Morpheus/icons/dist/devices/desktop.png",
        "operatingSystem": "Windows 10", "operatingSystemIcon": "plugins/Morpheus/icons/dist/os/WIN.png",
        "browser": "Chrome 124.0", "browserFamilyDescription": "Blink (Chrome)",
        "browserIcon": "plugins/Morpheus/icons/dist/browsers/CH.png", "country": "Germany", "region": "Berlin",
        "countryFlag": "plugins/Morpheus/icons/dist/flags/de.png",
    }


def find_body(segment: str = JANE_SEGMENT, id_sites: str = "all", limit: int = 401) -> dict[str, str]:
    return {"idSite": id_sites, "segment": segment, "filter_limit": str(limit)}


def live_body(site: str, offset: int, size: int, segment: str = JANE_SEGMENT) -> dict[str, str]:
    return {
        "idSite": site, "period": "range", "date": "1998-01-01,today", "segment": segment,
        "filter_limit": str(size), "filter_offset": str(offset), "doNotFetchActions": "1",
    }


def visits_body(*pairs: tuple[int, int]) -> dict[str, str]:
    body: dict[str, str] = {}
    for i, (idsite, idvisit) in enumerate(pairs):
        body[f"visits[{i}][idsite]"] = str(idsite)
        body[f"visits[{i}][idvisit]"] = str(idvisit)
    return body


def jane() -> Identities:
    return Identities([Identity(IdentityType.EMAIL, JANE), Identity(IdentityType.MATOMO_VISITOR_ID, JANE_PRELOGIN)])


# -- locate ------------------------------------------------------------------------------------


def test_locate_searches_user_id_its_hash_and_the_prelogin_visitor_id(
    api: responses.RequestsMock, ctx: ConnectorContext
) -> None:
    shared_device = visit(4761, visitor_id=JANE_PRELOGIN, user_id="jd-work-login")
    rows = [visit(4759), visit(4760, idsite=2), visit(4700, visitor_id=JANE_PRELOGIN, user_id=None), shared_device]
    expect(api, "PrivacyManager.findDataSubjects", find_body(), rows)

    hits = make(ctx).locate(jane())

    # The visit on her pre-login visitor id with another userId is someone else's (a shared computer):
    # not counted, nothing learned from it (issue 9), only said to be left alone.
    assert hits.found and hits.counts == {"visits": 3}
    assert hits.skipped == {"visits": {"visit of another userId on a shared visitor id": 1}}
    assert {(i.type, i.value) for i in hits.learned} == {
        (IdentityType.MATOMO_VISITOR_ID, JANE_HASH),  # the pre-login id was already known
    }
    assert all(i.source == "matomo" for i in hits.learned)
    assert [i.via for i in hits.learned] == ["matomo: visit 1/4759 (its userId is the subject's), field visitorId"]
    # The value is URL-encoded three times inside the segment, then the parameter is form-encoded.
    assert "segment=userId%3D%3Djane.doe%25252540example.com%2C" in body_text(api.calls[0])


def matomo_decodes(segment: str) -> list[str]:
    """The condition values as Matomo 5.2 reads them: three PHP urldecodes (whole segment, condition, value)."""
    whole = unquote_plus(segment)  # both forms parse into as many conditions here: the decoded one is kept
    return [unquote_plus(unquote_plus(condition).partition("==")[2]) for condition in whole.split(",")]


@pytest.mark.parametrize("user_id", ["jane+news@example.com", "100%ab@example.com", "a%2Bb@example.com"])
def test_a_user_id_with_plus_or_percent_reaches_matomo_intact(
    api: responses.RequestsMock, ctx: ConnectorContext, user_id: str
) -> None:
    # Regression (issue 18, point 4): encoded once, `jane+news@example.com` was searched as `jane news@example.com`
    # and `%ab` was decoded into another character.
    hashed = hashlib.sha1(user_id.encode()).hexdigest()[:16]
    triple = user_id.replace("%", "%252525").replace("+", "%25252B").replace("@", "%252540")
    segment = f"userId=={triple},visitorId=={hashed}"
    expect(api, "PrivacyManager.findDataSubjects", find_body(segment=segment),
           [visit(4790, visitor_id="0123456789abcdef", user_id=user_id)])

    hits = make(ctx).locate(Identities([Identity(IdentityType.EMAIL, user_id)]))

    assert hits.counts == {"visits": 1}
    assert matomo_decodes(segment) == [user_id, hashed]


def test_locate_with_account_id_as_user_id(api: responses.RequestsMock, ctx: ConnectorContext) -> None:
    hashed = hashlib.sha1(b"1001").hexdigest()[:16]
    expect(api, "PrivacyManager.findDataSubjects",
           find_body(segment=f"userId==1001,visitorId=={hashed}", id_sites="1,3"), [])
    connector = make(ctx, user_id_identity="account_id", id_sites=[1, 3])
    ids = Identities([Identity(IdentityType.EMAIL, JANE), Identity(IdentityType.ACCOUNT_ID, "1001")])

    hits = connector.locate(ids)

    assert not hits.found and hits.counts == {} and hits.learned == []
    assert IdentityType.ACCOUNT_ID in connector.accepts() and IdentityType.EMAIL not in connector.accepts()


def test_locate_without_a_searchable_identity_calls_nothing(api: responses.RequestsMock, ctx: ConnectorContext) -> None:
    hits = make(ctx).locate(Identities([Identity(IdentityType.PHONE, "+4791234567")]))
    assert not hits.found and len(api.calls) == 0


def test_truncated_find_is_completed_by_paging_live_per_site(
    api: responses.RequestsMock, ctx: ConnectorContext
) -> None:
    # filter_limit rows back: maybe truncated, so every site's visitor log is paged to the end.
    expect(api, "PrivacyManager.findDataSubjects", find_body(limit=4), [visit(n) for n in (1, 2, 3, 4)])
    expect(api, "SitesManager.getSitesIdWithAdminAccess", {}, [1, 2])
    expect(api, "Live.getLastVisitsDetails", live_body("1", 0, 2), [visit(1), visit(2)])
    # Visit 2 again: a new visit arrived between pages and shifted the list.
    expect(api, "Live.getLastVisitsDetails", live_body("1", 2, 2), [visit(2), visit(3)])
    expect(api, "Live.getLastVisitsDetails", live_body("1", 4, 2), [visit(4), visit(5)])
    expect(api, "Live.getLastVisitsDetails", live_body("1", 6, 2), [visit(6, visitor_id=JANE_PRELOGIN)])
    expect(api, "Live.getLastVisitsDetails", live_body("2", 0, 2), [visit(7, idsite=2)])

    hits = make(ctx, filter_limit=4, page_size=2).locate(jane())

    assert hits.counts == {"visits": 7}


def test_full_find_at_the_default_limit_is_treated_as_truncated(
    api: responses.RequestsMock, ctx: ConnectorContext
) -> None:
    expect(api, "PrivacyManager.findDataSubjects", find_body(id_sites="3"), [visit(n, 3) for n in range(401)])
    for page in range(5):
        size = 100 if page < 4 else 3
        rows = [visit(page * 100 + n, 3) for n in range(size)]
        expect(api, "Live.getLastVisitsDetails", live_body("3", page * 100, 100), rows)

    hits = make(ctx, id_sites="3").locate(jane())

    assert hits.counts == {"visits": 403}


def test_find_below_the_limit_is_complete(api: responses.RequestsMock, ctx: ConnectorContext) -> None:
    expect(api, "PrivacyManager.findDataSubjects", find_body(), [visit(n) for n in range(400)])
    assert make(ctx).locate(jane()).counts == {"visits": 400}  # no Live call registered, none made


# -- export ------------------------------------------------------------------------------------


def export_payload(idvisit: int) -> dict[str, Any]:
    """exportDataSubjects shape (tests/System/expected/exportDataSubject_oneVisitGiven.json)."""
    return {
        "log_visit": [{"idsite": "Shop", "idvisit": str(idvisit), "idvisitor": JANE_HASH, "user_id": JANE,
                       "location_ip": "203.0.113.0", "visit_total_time": "00:06:01"}],
        "log_link_visit_action": [{"idlink_va": str(idvisit * 10), "idsite": "1", "idvisit": str(idvisit),
                                   "idaction_url": "2", "server_time": "2024-05-02 14:19:37"}],
        "log_conversion_item": [],
        "log_conversion": [{"idvisit": str(idvisit), "idsite": "1", "idgoal": "1", "buster": "0", "revenue": "$0"}],
        "log_action_log_link_visit_action_idaction_url": [{"idaction": "2", "name": "https://shop.example.com/"}],
    }


def test_export_chunks_visits_and_yields_records_per_log_table(
    api: responses.RequestsMock, ctx: ConnectorContext
) -> None:
    expect(api, "PrivacyManager.findDataSubjects", find_body(), [visit(11), visit(12, 2), visit(13)])
    first = export_payload(11)
    for table, rows in export_payload(12).items():
        first[table] = first[table] + rows
    expect(api, "PrivacyManager.exportDataSubjects", visits_body((1, 11), (2, 12)), first)
    expect(api, "PrivacyManager.exportDataSubjects", visits_body((1, 13)), export_payload(13))

    records = list(make(ctx, chunk_size=2).export(jane()))

    by_entity: dict[str, list[str]] = {}
    for record in records:
        by_entity.setdefault(record.entity, []).append(record.record_id)
    assert by_entity == {
        "log_visit": ["11", "12", "13"],
        "log_link_visit_action": ["110", "120", "130"],
        "log_conversion": ["11:1:0", "12:1:0", "13:1:0"],
        "log_action_log_link_visit_action_idaction_url": ["2"],  # the same lookup row in both chunks
    }
    assert records[0].fields["user_id"] == JANE


def test_export_filters_entities(api: responses.RequestsMock, ctx: ConnectorContext) -> None:
    expect(api, "PrivacyManager.findDataSubjects", find_body(), [visit(11)])
    expect(api, "PrivacyManager.exportDataSubjects", visits_body((1, 11)), export_payload(11))

    records = list(make(ctx).export(jane(), entities=["log_visit", "log_action"]))

    assert sorted(r.entity for r in records) == ["log_action_log_link_visit_action_idaction_url", "log_visit"]


def test_export_of_visits_means_every_table(api: responses.RequestsMock, ctx: ConnectorContext) -> None:
    expect(api, "PrivacyManager.findDataSubjects", find_body(), [visit(11)])
    expect(api, "PrivacyManager.exportDataSubjects", visits_body((1, 11)), export_payload(11))

    records = list(make(ctx).export(jane(), entities=["visits"]))  # the entity locate counts

    assert {r.entity for r in records} == {"log_visit", "log_link_visit_action", "log_conversion",
                                           "log_action_log_link_visit_action_idaction_url"}


# -- erase -------------------------------------------------------------------------------------


def test_erase_deletes_in_chunks_and_sums_the_table_counts(api: responses.RequestsMock, ctx: ConnectorContext) -> None:
    rows = [visit(21, when="2024-05-01 08:00:00"), visit(22, 2), visit(23, visitor_id=JANE_PRELOGIN, user_id=None)]
    expect(api, "PrivacyManager.findDataSubjects", find_body(), rows)
    expect(api, "PrivacyManager.deleteDataSubjects", visits_body((1, 21), (2, 22)),
           {"log_visit": 2, "log_link_visit_action": 14, "log_conversion_item": 0, "log_conversion": 1})
    expect(api, "PrivacyManager.deleteDataSubjects", visits_body((1, 23)),
           {"log_visit": 1, "log_link_visit_action": 3, "log_conversion_item": 0, "log_conversion": 0})

    receipt = make(ctx, chunk_size=2).erase(jane())

    assert receipt.changed == {"log_visit": 3, "log_link_visit_action": 17, "log_conversion_item": 0,
                               "log_conversion": 1}
    text = " ".join(receipt.details)
    assert "log_action" in text and "web-server" in text
    # deleteDataSubjects invalidates the visits' dates itself since Matomo 3.10 (PrivacyManager/Model/
    # DataSubjects.php L121-146): no manual step, and the receipt says so. (Until issue 18 this expected a manual
    # "invalidate the archived reports" step and the caveat that archived reports were not changed.)
    assert receipt.manual_steps == []
    assert "invalidated the reports of site(s) 1, 2" in text and "no manual step is needed" in text
    assert "not changed" not in text
    assert JANE not in " ".join(receipt.details + receipt.manual_steps)


def test_erase_of_anonymous_visits_needs_no_manual_step(api: responses.RequestsMock, ctx: ConnectorContext) -> None:
    prelogin = f"visitorId=={JANE_PRELOGIN}"
    expect(api, "PrivacyManager.findDataSubjects", find_body(segment=prelogin),
           [visit(31, visitor_id=JANE_PRELOGIN, user_id=None)])
    expect(api, "PrivacyManager.deleteDataSubjects", visits_body((1, 31)),
           {"log_visit": 1, "log_link_visit_action": 2, "log_conversion_item": 0, "log_conversion": 0})

    receipt = make(ctx).erase(Identities([Identity(IdentityType.MATOMO_VISITOR_ID, JANE_PRELOGIN)]))

    assert receipt.changed["log_visit"] == 1 and receipt.manual_steps == []


def test_erase_with_nothing_found_deletes_nothing(api: responses.RequestsMock, ctx: ConnectorContext) -> None:
    expect(api, "PrivacyManager.findDataSubjects", find_body(), [])
    receipt = make(ctx).erase(jane())
    assert receipt.changed == {} and receipt.manual_steps == [] and len(api.calls) == 1


def test_erase_selected_by_the_located_entity(api: responses.RequestsMock, ctx: ConnectorContext) -> None:
    expect(api, "PrivacyManager.findDataSubjects", find_body(), [visit(51)])
    expect(api, "PrivacyManager.deleteDataSubjects", visits_body((1, 51)),
           {"log_visit": 1, "log_link_visit_action": 1, "log_conversion_item": 0, "log_conversion": 0})
    connector = make(ctx)

    receipt = connector.erase(jane(), entities=["visits"])
    untouched = connector.erase(jane(), entities=["contacts"])  # not a Matomo entity: no call at all

    assert receipt.changed["log_visit"] == 1 and untouched.changed == {}
    assert set(connector.policies()) == set(connector.entities) and "visits" in connector.entities


ZEROS = {"log_visit": 0, "log_link_visit_action": 0, "log_conversion_item": 0, "log_conversion": 0}


def test_a_delete_that_deleted_no_row_fails_with_the_counts(api: responses.RequestsMock, ctx: ConnectorContext) -> None:
    # deleteDataSubjects answers the rows it deleted per log table ([V] PrivacyManager DataSubjectsTest); zeros for
    # a visit a fresh search still finds: nothing was done.
    expect(api, "PrivacyManager.findDataSubjects", find_body(), [visit(61), visit(62)])
    expect(api, "PrivacyManager.deleteDataSubjects", visits_body((1, 61)),
           {"log_visit": 1, "log_link_visit_action": 2, "log_conversion_item": 0, "log_conversion": 0})
    expect(api, "PrivacyManager.deleteDataSubjects", visits_body((1, 62)), ZEROS)
    expect(api, "PrivacyManager.findDataSubjects", find_body(), [visit(62)])  # still there

    with pytest.raises(PermanentError) as info:
        make(ctx, chunk_size=1).erase(jane())

    assert info.value.message == (
        "PrivacyManager.deleteDataSubjects (1 visit(s)) answered that it changed nothing (log_visit=0, "
        "log_link_visit_action=0, log_conversion_item=0, log_conversion=0); the task is not done")
    assert info.value.note is not None


def test_zeros_for_visits_a_fresh_search_no_longer_finds_are_done(api: responses.RequestsMock,
                                                                   ctx: ConnectorContext) -> None:
    # The visit went meanwhile (Matomo's own GDPR tool, or a retried call whose first answer was lost): the person's
    # visits are gone, which is what the erasure is for; the receipt says so.
    expect(api, "PrivacyManager.findDataSubjects", find_body(), [visit(61)])
    expect(api, "PrivacyManager.deleteDataSubjects", visits_body((1, 61)), ZEROS)
    expect(api, "PrivacyManager.findDataSubjects", find_body(), [])

    receipt = make(ctx).erase(jane())

    assert receipt.changed == {}
    assert "1 visit(s) were already gone when deleteDataSubjects ran" in receipt.details


def test_restrict_and_lift_are_unsupported(ctx: ConnectorContext) -> None:
    connector = make(ctx)
    with pytest.raises(UnsupportedAction, match="browser-side"):
        connector.restrict(jane())
    with pytest.raises(UnsupportedAction, match="no per-person server-side restriction to lift"):
        connector.lift_restriction(jane())
    # The planner still plans a restriction of whole visits, so the request reports it as not possible.
    policies = connector.policies()
    assert [e for e, p in policies.items() if p.restrict] == ["visits"]
    assert "not possible" in (policies["visits"].restrict or "")


# -- check -------------------------------------------------------------------------------------


def test_check_wants_admin_access_to_the_configured_sites(api: responses.RequestsMock, ctx: ConnectorContext) -> None:
    expect(api, "SitesManager.getSitesIdWithAdminAccess", {}, [1, 2])
    expect(api, "SitesManager.getSitesIdWithAdminAccess", {}, [1, 2])

    assert make(ctx, id_sites="1,2").check().ok
    health = make(ctx, id_sites="2,3").check()
    assert not health.ok and health.problems == ["the token lacks admin access to site(s) 3"]


def test_admin_sites_answered_as_an_object_are_read(api: responses.RequestsMock, ctx: ConnectorContext) -> None:
    # core/Access.php L399-407: array_unique(array_merge(admin, superuser)) keeps keys, so a super user who also
    # has an admin row gets e.g. {"0": 2, "1": 1, "3": 3} (json_encode of a non-list array). Before issue 18 the
    # connector answered "returned no list".
    expect(api, "SitesManager.getSitesIdWithAdminAccess", {}, {"0": 2, "1": 1, "3": 3})
    expect(api, "SitesManager.getSitesIdWithAdminAccess", {}, {"0": 2, "1": 1, "3": 3})
    expect(api, "PrivacyManager.findDataSubjects", find_body(limit=2), [visit(1), visit(2)])
    expect(api, "Live.getLastVisitsDetails", live_body("2", 0, 100), [])
    expect(api, "Live.getLastVisitsDetails", live_body("1", 0, 100), [visit(1), visit(2), visit(3)])
    expect(api, "Live.getLastVisitsDetails", live_body("3", 0, 100), [])

    assert make(ctx, id_sites="1,3").check().ok
    assert make(ctx, filter_limit=2).locate(jane()).counts == {"visits": 3}


def test_check_reports_a_rejected_token(api: responses.RequestsMock, ctx: ConnectorContext) -> None:
    message = "Unable to authenticate with the provided token. It is either invalid or expired."
    expect(api, "SitesManager.getSitesIdWithAdminAccess", {}, {"result": "error", "message": message}, status=401)

    health = make(ctx).check()

    assert not health.ok
    assert "SitesManager.getSitesIdWithAdminAccess" in health.problems[0] and "401" in health.problems[0]


# -- errors and retries ------------------------------------------------------------------------


def test_401_is_permanent_and_names_the_method(api: responses.RequestsMock, ctx: ConnectorContext) -> None:
    message = "You can't access this resource as it requires 'admin' access for at least one website."
    expect(api, "PrivacyManager.findDataSubjects", find_body(), {"result": "error", "message": message}, status=401)

    with pytest.raises(PermanentError) as err:
        make(ctx).locate(jane())

    assert not isinstance(err.value, TransientError)
    assert "PrivacyManager.findDataSubjects" in str(err.value) and "HTTP 401" in str(err.value)
    assert TOKEN not in str(err.value)


def test_result_error_at_http_200_is_an_error_without_personal_data(
    api: responses.RequestsMock, ctx: ConnectorContext
) -> None:
    message = f"The segment condition 'userId=={JANE}' is not valid."
    expect(api, "PrivacyManager.findDataSubjects", find_body(), {"result": "error", "message": message})

    with pytest.raises(PermanentError, match=r"PrivacyManager\.findDataSubjects failed") as err:
        make(ctx).locate(jane())

    assert JANE not in str(err.value) and "<email>" in str(err.value)


def test_429_then_success_waits_as_asked(
    api: responses.RequestsMock, ctx: ConnectorContext, sleeps: list[float]
) -> None:
    expect(api, "PrivacyManager.findDataSubjects", find_body(), {"message": "slow down"}, status=429,
           headers={"Retry-After": "2"})
    expect(api, "PrivacyManager.findDataSubjects", find_body(), [visit(1)])

    assert make(ctx).locate(jane()).counts == {"visits": 1}
    assert sleeps == [2.0]


def test_500_then_success(api: responses.RequestsMock, ctx: ConnectorContext, sleeps: list[float]) -> None:
    expect(api, "SitesManager.getSitesIdWithAdminAccess", {}, {"message": "boom"}, status=500)
    expect(api, "SitesManager.getSitesIdWithAdminAccess", {}, [1])

    assert make(ctx).check().ok
    assert len(sleeps) == 1


def test_500_until_retries_run_out(api: responses.RequestsMock, ctx: ConnectorContext, sleeps: list[float]) -> None:
    for _ in range(FAST_RETRY.attempts):
        expect(api, "PrivacyManager.deleteDataSubjects", visits_body((1, 41)), {"message": "boom"}, status=500)
    expect(api, "PrivacyManager.findDataSubjects", find_body(), [visit(41)])

    with pytest.raises(TransientError) as err:
        make(ctx).erase(jane())

    assert "PrivacyManager.deleteDataSubjects" in str(err.value)
    assert f"failed after {FAST_RETRY.attempts} attempts" in str(err.value) and "HTTP 500" in str(err.value)
    assert len(sleeps) == FAST_RETRY.attempts - 1


# -- settings ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"base_url": None}, "base_url"),
        ({"base_url": "ftp://analytics.example.com"}, "base_url"),
        ({"token_env": "DSAR_NOT_SET"}, "token_env"),
        ({"user_id_identity": "phone"}, "user_id_identity"),
        ({"filter_limit": 0}, "filter_limit"),
        ({"chunk_size": "100"}, "chunk_size"),
        ({"id_sites": "shop"}, "id_sites"),
        ({"rate_per_second": -1}, "rate_per_second"),
    ],
)
def test_bad_settings_name_the_key(ctx: ConnectorContext, overrides: dict[str, Any], key: str) -> None:
    with pytest.raises(PermanentError, match=key):
        make(ctx, **overrides)


def test_base_url_may_name_index_php(api: responses.RequestsMock, ctx: ConnectorContext) -> None:
    expect(api, "SitesManager.getSitesIdWithAdminAccess", {}, [1])
    assert make(ctx, base_url=f"{BASE}/index.php").check().ok
