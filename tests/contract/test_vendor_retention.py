"""Contract tests for the vendor connectors' retention (issue 19 point 4; docs/retention.md, "Vendor systems").

Matomo deletes visits by age itself: PrivacyManager.findDataSubjects with a segment on `visitEndServerDate` (the UTC
date of the visit's last action, CoreHome/Columns/VisitLastActionDate.php @ f09912cb) and `!=` conditions for the
open requests' identities, then deleteDataSubjects in batches. FreshChat, Mautic and SALESmanago declare their rules
(kept until the person asks, or a vendor setting confirmed by hand) and call nothing for them.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any

import pytest
import responses

from connectors.base import ConnectorContext, Identities, Identity, IdentityType, PermanentError, UnsupportedAction
from connectors.freshchat import FreshchatConnector
from connectors.mautic import MauticConnector
from connectors.retention import (
    MECHANISM_CONFIRM,
    MECHANISM_REQUEST,
    MECHANISM_RUN,
    Keep,
    Period,
    RetentionRule,
    render,
)
from connectors.salesmanago import SalesmanagoConnector
from tests.contract.conftest import FAST_RETRY
from tests.contract.test_matomo import JANE, JANE_HASH, JANE_PRELOGIN, api, expect, find_body, jane, make, visit
from tests.contract.test_matomo import visits_body as pairs

__all__ = ["api"]  # the fixture, imported for its name

NOW = datetime(2025, 3, 1, 9, 30, tzinfo=UTC)
# 5 years before 2025-03-01: 2020-03-01 + 5 years = 2025-03-01 is today, so it is kept; 2020-02-29 + 5 years =
# 2025-02-28 is past, so it is due (connectors.retention's boundary; docs/retention.md).
AGE = "visitEndServerDate<2020-03-01"
KEEP_OR = ",".join(["userId==jane.doe%252540example.com", *sorted([f"visitorId=={JANE_HASH}",
                                                                   f"visitorId=={JANE_PRELOGIN}"])])
NOT_KEPT = ";".join(["userId!=jane.doe%252540example.com", *sorted([f"visitorId!={JANE_HASH}",
                                                                    f"visitorId!={JANE_PRELOGIN}"])])
REASON = {"en": "the privacy policy: five years", "nb": "personvernerklæringen: fem år"}
VISITS_RULE = {"entity": "visits", "after": "5 years", "by": "dsar", "reason": REASON}
COUNTS = {"log_visit": 0, "log_link_visit_action": 0, "log_conversion_item": 0, "log_conversion": 0}


def counts(visits: int, actions: int) -> dict[str, int]:
    return {**COUNTS, "log_visit": visits, "log_link_visit_action": actions}


def matomo(ctx: ConnectorContext, **overrides: Any) -> Any:
    return make(ctx, retention_rules=[VISITS_RULE], **overrides)


def rule_of(conn: Any) -> RetentionRule:
    (rule,) = conn.retention_rules()
    return rule  # type: ignore[no-any-return]


def keep_jane() -> Keep:
    return Keep(identities=jane())


def old(idvisit: int, idsite: int = 1, when: str = "2019-06-01 10:00:00") -> dict[str, Any]:
    return visit(idvisit, idsite, visitor_id="00000000000000aa", user_id=None, when=when)


# -- the rules -----------------------------------------------------------------------------------------


def test_matomo_declares_the_visits_rule_run_by_dsar(ctx: ConnectorContext) -> None:
    rule = rule_of(matomo(ctx))
    assert (rule.system, rule.entity, rule.mechanism, rule.period) == ("matomo", "visits", MECHANISM_RUN,
                                                                        Period(5, "years"))
    assert rule.from_field == "visit_last_action_time" and rule.unless == ("open_request",)
    assert not rule.confirm_by_hand
    assert render(rule.text) == "visits: erased 5 years after the visit's last action (the privacy policy: five years)"
    assert make(ctx).retention_rules() == []  # nothing declared, nothing kept


def test_freshchat_mautic_and_salesmanago_declare_rules_without_calls(vendor: responses.RequestsMock,
                                                                      ctx: ConnectorContext) -> None:
    chat = FreshchatConnector.from_settings("freshchat", {
        "base_url": "https://acme.freshchat.com/v2", "token_env": "DSAR_FRESHCHAT_TOKEN",
        "retention_rules": [{"entity": "conversations", "by": "request", "reason": "the privacy policy"}]}, ctx)
    (rule,) = chat.retention_rules()
    assert rule.mechanism == MECHANISM_REQUEST and rule.period is None and not rule.confirm_by_hand
    assert render(rule.text) == "conversations: kept until you ask us to delete it (the privacy policy)"

    sm = SalesmanagoConnector.from_settings("salesmanago", {
        "base_url": "https://app3.salesmanago.com/api", "owner": "owner@shop.example", "client_id_env":
        "DSAR_SALESMANAGO_CLIENT_ID", "api_key_env": "DSAR_SALESMANAGO_API_KEY",
        "api_secret_env": "DSAR_SALESMANAGO_API_SECRET", "retention_rules": [{
            "entity": "contact", "by": "vendor_setting", "until": {"en": "you withdraw consent", "nb": "du trekker"
                                                                     " tilbake samtykket"},
            "setting": "opted-out contacts removed", "reason": "consent"}]}, ctx, retry=FAST_RETRY)
    (rule,) = sm.retention_rules()
    assert rule.mechanism == MECHANISM_CONFIRM and rule.confirm_by_hand
    assert render(rule.text, code="nb") == "contact: erased when du trekker tilbake samtykket (consent)"

    mautic = MauticConnector.from_settings("mautic", {
        "base_url": "https://mautic.example.com", "user_env": "DSAR_MAUTIC_USER",
        "password_env": "DSAR_MAUTIC_PASSWORD",
        "retention_rules": [{"entity": "contact", "by": "vendor_setting", "after": "3 years",
                             "from": "the last activity", "setting": "cron: mautic:maintenance:cleanup --days-old",
                             "reason": "anonymous visitors"}]}, ctx)
    (rule,) = mautic.retention_rules()
    assert rule.mechanism == MECHANISM_CONFIRM and rule.period == Period(3, "years")
    with pytest.raises(UnsupportedAction):
        mautic.retention_due(rule, NOW, Keep())
    assert len(vendor.calls) == 0


@pytest.mark.parametrize(("rule", "message"), [
    ({"entity": "conversations", "by": "dsar", "after": "1 year", "reason": "abc"}, "dsar cannot delete"),
    ({"entity": "chats", "by": "request", "reason": "abc"}, "'chats' is not one of"),
    ({"entity": "conversations", "by": "request", "after": "1 year", "reason": "abc"}, "takes no after"),
    ({"entity": "conversations", "by": "vendor_setting", "after": "90 days", "setting": "support's policy",
      "reason": "abc"}, "needs from"),
    ({"entity": "conversations", "by": "vendor_setting", "reason": "abc", "until": "asked"}, "needs setting"),
    ({"entity": "conversations", "by": "request", "reason": "x"}, "in words"),
])
def test_a_bad_rule_is_one_line_naming_the_key(ctx: ConnectorContext, rule: dict[str, Any], message: str) -> None:
    with pytest.raises(PermanentError) as err:
        FreshchatConnector.from_settings("freshchat", {"base_url": "https://acme.freshchat.com/v2",
                                                       "token_env": "DSAR_FRESHCHAT_TOKEN",
                                                       "retention_rules": [rule]}, ctx)
    assert "retention_rules" in err.value.message and message in err.value.message
    assert "\n" not in err.value.message


# -- Matomo: due ----------------------------------------------------------------------------------------


def test_due_counts_old_visits_and_those_kept_for_an_open_request(api: responses.RequestsMock,
                                                                  ctx: ConnectorContext) -> None:
    expect(api, "PrivacyManager.findDataSubjects", find_body(f"{AGE};{NOT_KEPT}"),
           [old(5), old(6, when="2018-01-02 23:59:59")])
    expect(api, "PrivacyManager.findDataSubjects", find_body(f"{AGE};{KEEP_OR}"),
           [visit(7, when="2019-01-01 00:00:00")])
    conn = matomo(ctx)

    due = conn.retention_due(rule_of(conn), NOW, keep_jane())

    assert (due.due, due.kept_request, due.kept_hold, due.undated) == (2, 1, 0, 0)
    assert due.oldest == datetime(2018, 1, 2, 23, 59, 59, tzinfo=UTC)


def test_due_without_open_requests_asks_by_age_only(api: responses.RequestsMock, ctx: ConnectorContext) -> None:
    expect(api, "PrivacyManager.findDataSubjects", find_body(AGE), [])
    conn = matomo(ctx)
    due = conn.retention_due(rule_of(conn), NOW, Keep())
    assert (due.due, due.kept_request, due.oldest) == (0, 0, None)


def test_the_boundary_moves_at_midnight_utc(api: responses.RequestsMock, ctx: ConnectorContext) -> None:
    expect(api, "PrivacyManager.findDataSubjects", find_body("visitEndServerDate<2020-03-02"), [])
    conn = matomo(ctx)
    conn.retention_due(rule_of(conn), datetime(2025, 3, 2, 0, 0, tzinfo=UTC), Keep())


# -- Matomo: apply --------------------------------------------------------------------------------------


def test_apply_deletes_in_batches_and_checkpoints_after_each(api: responses.RequestsMock,
                                                             ctx: ConnectorContext) -> None:
    expect(api, "PrivacyManager.findDataSubjects", find_body(f"{AGE};{KEEP_OR}"), [visit(7)])
    expect(api, "PrivacyManager.findDataSubjects", find_body(f"{AGE};{NOT_KEPT}"), [old(1), old(2, 2), old(3)])
    expect(api, "PrivacyManager.deleteDataSubjects", pairs((1, 1), (2, 2)), counts(2, 5))
    expect(api, "PrivacyManager.deleteDataSubjects", pairs((1, 3)), counts(1, 1))
    conn = matomo(ctx)
    seen: list[Any] = []

    receipt = conn.retention_apply(rule_of(conn), NOW, keep_jane(), batch=2,
                                   checkpoint=lambda cursor, r: seen.append((cursor, dict(r.changed))))

    assert seen == [({"deleted": 2}, counts(2, 5)), ({"deleted": 3}, counts(3, 6))]
    assert receipt.changed == counts(3, 6)
    assert receipt.skipped == {"visits": {"kept: the person has an open request": 1}}
    text = " ".join(receipt.details)
    assert "visits: 3 erased" in text and "site(s) 1, 2" in text and JANE not in text


def test_batches_never_exceed_the_chunk_size(api: responses.RequestsMock, ctx: ConnectorContext) -> None:
    expect(api, "PrivacyManager.findDataSubjects", find_body(AGE), [old(1), old(2)])
    expect(api, "PrivacyManager.deleteDataSubjects", pairs((1, 1)), counts(1, 1))
    expect(api, "PrivacyManager.deleteDataSubjects", pairs((1, 2)), counts(1, 1))
    conn = matomo(ctx, chunk_size=1)
    assert conn.retention_apply(rule_of(conn), NOW, Keep(), batch=1000).changed == counts(2, 2)


def test_a_full_answer_is_asked_again_until_a_short_one(api: responses.RequestsMock, ctx: ConnectorContext) -> None:
    first = [old(i) for i in range(1, 402)]  # findDataSubjects' cap: 401 rows means there may be more
    expect(api, "PrivacyManager.findDataSubjects", find_body(AGE), first)
    for start in range(1, 402, 100):
        chunk = [(1, i) for i in range(start, min(start + 100, 402))]
        expect(api, "PrivacyManager.deleteDataSubjects", pairs(*chunk), counts(len(chunk), 0))
    expect(api, "PrivacyManager.findDataSubjects", find_body(AGE), [old(500)])
    expect(api, "PrivacyManager.deleteDataSubjects", pairs((1, 500)), counts(1, 0))
    conn = matomo(ctx)
    assert conn.retention_apply(rule_of(conn), NOW, Keep())
    assert sum(1 for c in api.calls if "deleteDataSubjects" in str(c.request.url)) == 6


def test_a_visit_found_again_after_its_delete_fails_instead_of_looping(api: responses.RequestsMock,
                                                                      ctx: ConnectorContext) -> None:
    full = [old(i) for i in range(1, 402)]
    expect(api, "PrivacyManager.findDataSubjects", find_body(AGE), full)
    for start in range(1, 402, 100):
        chunk = [(1, i) for i in range(start, min(start + 100, 402))]
        expect(api, "PrivacyManager.deleteDataSubjects", pairs(*chunk), counts(0, 0))
    expect(api, "PrivacyManager.findDataSubjects", find_body(AGE), full)
    conn = matomo(ctx)
    with pytest.raises(PermanentError) as err:
        conn.retention_apply(rule_of(conn), NOW, Keep())
    assert "still found after their delete" in err.value.message


def test_a_resumed_rule_counts_on_from_its_cursor(api: responses.RequestsMock, ctx: ConnectorContext) -> None:
    expect(api, "PrivacyManager.findDataSubjects", find_body(AGE), [old(9)])
    expect(api, "PrivacyManager.deleteDataSubjects", pairs((1, 9)), counts(1, 2))
    conn = matomo(ctx)
    seen: list[Any] = []
    conn.retention_apply(rule_of(conn), NOW, Keep(), cursor={"deleted": 200},
                         checkpoint=lambda cursor, r: seen.append(cursor))
    assert seen == [{"deleted": 201}]


def test_nothing_due_deletes_nothing(api: responses.RequestsMock, ctx: ConnectorContext) -> None:
    expect(api, "PrivacyManager.findDataSubjects", find_body(AGE), [])
    conn = matomo(ctx)
    receipt = conn.retention_apply(rule_of(conn), NOW, Keep(requests=False, identities=jane()))
    assert receipt.changed == {} and receipt.skipped == {}


def test_only_a_dsar_rule_is_run(ctx: ConnectorContext) -> None:
    conn = matomo(ctx)
    other = RetentionRule(system="matomo", entity="visits", mechanism=MECHANISM_CONFIRM, text=rule_of(conn).text)
    with pytest.raises(UnsupportedAction):
        conn.retention_apply(other, NOW, Keep())
    with pytest.raises(UnsupportedAction):
        make(ctx).retention_due(rule_of(conn), NOW, Keep())


# -- Matomo: check --------------------------------------------------------------------------------------


def test_check_tries_the_retention_search_when_a_rule_is_run_by_dsar(api: responses.RequestsMock,
                                                                    ctx: ConnectorContext) -> None:
    expect(api, "SitesManager.getSitesIdWithAdminAccess", {}, [1, 2])
    expect(api, "PrivacyManager.findDataSubjects", find_body("visitEndServerDate<1998-01-01"),
           {"result": "error", "message": "Segment 'visitEndServerDate' is not a supported segment."})
    health = matomo(ctx).check()
    assert not health.ok and health.problems[0].startswith("retention: PrivacyManager.findDataSubjects failed")


def test_visit_of_an_identity_kept_is_excluded_with_every_form(api: responses.RequestsMock,
                                                               ctx: ConnectorContext) -> None:
    # an account id kept as Matomo userId too: each identity is one more `!=` condition
    keep = Identities([Identity(IdentityType.EMAIL, JANE), Identity(IdentityType.MATOMO_USER_ID, "u-17")])
    hashed = hashlib.sha1(b"u-17").hexdigest()[:16]
    not_kept = ";".join(["userId!=jane.doe%252540example.com", "userId!=u-17",
                         *sorted([f"visitorId!={JANE_HASH}", f"visitorId!={hashed}"])])
    expect(api, "PrivacyManager.findDataSubjects", find_body(f"{AGE};{not_kept}"), [])
    expect(api, "PrivacyManager.findDataSubjects",
           find_body(f"{AGE};" + not_kept.replace("!=", "==").replace(";", ",")), [])
    conn = matomo(ctx)
    conn.retention_due(rule_of(conn), NOW, Keep(identities=keep))
