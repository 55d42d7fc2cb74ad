"""Contract tests for FreshchatConnector: every call it makes, mocked strictly with `responses`.

Response bodies follow shared/vendor-apis.md section 1: `{"users": [...]}` search envelope with
`pagination` / `links`, user objects with `id`, `email`, `phone`, `reference_id`, `properties[{name,value}]`,
`{"conversations": [{"id": ...}]}`, and the `{code, status, message}` error envelope. A messages page is
`{"link": {...}, "messages": [...]}` with no pagination block (idjoo/freshchat-sdk configs/openapi.yaml @ afe30a08,
schema `transcript_message_response`; vendor-source-check.md F6), at most 50 a page (getkarta/freshchat-downloader
freshchat_client.py L107). No FreshChat source lists `DELETE /users/{id}` (vendor-source-check.md F7): the tests of
a delete are for a tenant that has one (`supports_user_delete: true`).
"""

from __future__ import annotations

from typing import Any

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
from connectors.freshchat import FreshchatConnector
from tests.contract.conftest import FAST_RETRY

BASE = "https://acme.freshchat.com/v2"
TOKEN = "fc-test-token"
AUTH = matchers.header_matcher({"Authorization": f"Bearer {TOKEN}"})
SETTINGS: dict[str, Any] = {"base_url": BASE, "token_env": "DSAR_FRESHCHAT_TOKEN"}

JANE_ID = "2deb2a22-703e-4f1d-8527-7bd123c84fd4"
DECOY_ID = "9c1e5f0a-31b4-4a5e-8d8e-0f6b2f7c1a11"
JANE_EMAIL = "jane.doe@example.com"
JANE_PHONE = "+4791234567"


def _user(**overrides: Any) -> dict[str, Any]:
    user = {
        "id": JANE_ID,
        "email": "Jane.Doe@Example.com",
        "first_name": "Jane",
        "last_name": "Doe",
        "phone": JANE_PHONE,
        "reference_id": "1001",
        "properties": [{"name": "plan", "value": "pro"}],
        "created_time": "2024-02-11T09:14:22.311Z",
        "updated_time": "2024-05-02T17:40:05.120Z",
        "login_status": False,
    }
    user.update(overrides)
    return user


def _users_page(*users: dict[str, Any]) -> dict[str, Any]:
    return {
        "users": list(users),
        "pagination": {"total_items": len(users), "total_pages": 1, "current_page": 1, "items_per_page": 10},
        "links": {},
    }


def _conversation(cid: str, status: str) -> dict[str, Any]:
    return {
        "conversation_id": cid, "status": status, "channel_id": "c0ffee00-0000-4000-8000-000000000001",
        "user_id": JANE_ID, "assigned_agent_id": "a9e11000-0000-4000-8000-000000000002", "assigned_group_id": None,
        "properties": {}, "created_time": "2024-03-01T10:00:00.000Z", "updated_time": "2024-03-02T10:00:00.000Z",
    }


def _message(cid: str, n: int) -> dict[str, Any]:
    return {
        "id": f"{cid}-m{n}", "conversation_id": cid, "actor_type": "user" if n % 2 == 0 else "agent",
        "actor_id": JANE_ID, "user_id": JANE_ID, "message_type": "normal",
        "message_parts": [{"text": {"content": f"hello {n}"}}], "created_time": "2024-03-01T10:00:00.000Z",
    }


def _messages_page(cid: str, start: int, count: int, page: int, per_page: int = 50) -> dict[str, Any]:
    """One page as FreshChat answers it: `link` and `messages`, no `pagination` or `links` (openapi
    `transcript_message_response`, idjoo/freshchat-sdk configs/openapi.yaml @ afe30a08)."""
    href = f"/v2/conversations/{cid}/messages?page={page}&items_per_page={per_page}"
    return {"link": {"href": href, "rel": "self", "type": "GET"},
            "messages": [_message(cid, n) for n in range(start, start + count)]}


def _reads(vendor: responses.RequestsMock, *cids: str) -> None:
    """The reads that show who is in each conversation: its detail and one short page of messages."""
    for cid in cids:
        _get(vendor, f"/conversations/{cid}", _conversation(cid, "resolved"))
        _get(vendor, f"/conversations/{cid}/messages", _messages_page(cid, 0, 2, 1),
             query={"page": "1", "items_per_page": "50"})


def _error(code: int, status: str, message: str) -> dict[str, Any]:
    return {"code": code, "status": status, "message": message}


def _get(vendor: responses.RequestsMock, path: str, body: Any, *, query: dict[str, str] | None = None,
         status: int = 200, headers: dict[str, str] | None = None) -> None:
    vendor.add(
        responses.GET, f"{BASE}{path}", json=body, status=status, headers=headers,
        match=[AUTH, matchers.query_param_matcher(query or {})],
    )


def _send(vendor: responses.RequestsMock, method: str, path: str, body: Any, *, sent: Any = None,
          status: int = 200) -> None:
    match = [AUTH, matchers.query_param_matcher({})]
    if sent is not None:
        match += [matchers.json_params_matcher(sent),
                  matchers.header_matcher({"Content-Type": "application/json"})]
    vendor.add(method, f"{BASE}{path}", json=body, status=status, match=match)


def _connector(ctx: ConnectorContext, **settings: Any) -> FreshchatConnector:
    return FreshchatConnector.from_settings("freshchat", {**SETTINGS, **settings}, ctx, retry=FAST_RETRY)


def _email(value: str = JANE_EMAIL) -> Identities:
    return Identities([Identity(IdentityType.EMAIL, value)])


def _uid(value: str = JANE_ID) -> Identities:
    return Identities([Identity(IdentityType.FRESHCHAT_USER_ID, value)])


# ---------------------------------------------------------------------------- settings


@pytest.mark.parametrize(
    ("settings", "key"),
    [
        ({"base_url": "acme.freshchat.com/v2"}, "base_url"),
        ({"token_env": "DSAR_NOT_SET"}, "token_env"),
        ({"items_per_page": 0}, "items_per_page"),
        ({"reference_id_identity": "shoe_size"}, "reference_id_identity"),
        ({"supports_user_delete": "yes"}, "supports_user_delete"),
        ({"rate_per_second": -1}, "rate_per_second"),
        ({"suports_user_delete": False}, "suports_user_delete"),
    ],
)
def test_bad_settings_name_the_key(ctx: ConnectorContext, settings: dict[str, Any], key: str) -> None:
    with pytest.raises(PermanentError) as err:
        _connector(ctx, **settings)
    assert key in str(err.value)


def test_accepts_follows_reference_id_identity(ctx: ConnectorContext) -> None:
    assert _connector(ctx).accepts() == {IdentityType.EMAIL, IdentityType.FRESHCHAT_USER_ID, IdentityType.ACCOUNT_ID}
    assert IdentityType.ACCOUNT_ID not in _connector(ctx, reference_id_identity=None).accepts()


def test_policies_cover_every_entity_and_name_the_property(ctx: ConnectorContext) -> None:
    policies = _connector(ctx, restricted_property="dsar_hold").policies()
    assert set(policies) == {"user", "conversations", "messages"}
    assert "dsar_hold" in (policies["user"].restrict or "")
    assert policies["messages"].restrict is None


# ---------------------------------------------------------------------------- locate


def test_locate_by_email_checks_the_returned_email_and_learns(
    ctx: ConnectorContext, vendor: responses.RequestsMock
) -> None:
    decoy = _user(id=DECOY_ID, email="jane.doe@example.com.au", phone="+61400000000", reference_id="10010")
    _get(vendor, "/users", _users_page(_user(), decoy), query={"email": JANE_EMAIL})
    _get(vendor, f"/users/{JANE_ID}/conversations", {"conversations": [{"id": "c1"}, {"id": "c2"}]})
    _reads(vendor, "c1", "c2")
    hits = _connector(ctx).locate(_email())
    assert hits.found
    assert hits.counts == {"user": 1, "conversations": 2}
    assert {(i.type, i.value, i.source) for i in hits.learned} == {
        (IdentityType.FRESHCHAT_USER_ID, JANE_ID, "freshchat"),
        (IdentityType.PHONE, JANE_PHONE, "freshchat"),
    }
    assert {i.type: i.via for i in hits.learned} == {
        IdentityType.FRESHCHAT_USER_ID: f"freshchat: user {JANE_ID} (matched by e-mail), field id",
        IdentityType.PHONE: f"freshchat: user {JANE_ID} (matched by e-mail), field phone",
    }
    assert "conversations" not in hits.touches and hits.skipped == {}  # nobody else in her conversations


def test_locate_by_reference_id_learns_the_email(ctx: ConnectorContext, vendor: responses.RequestsMock) -> None:
    _get(vendor, "/users", _users_page(_user()), query={"reference_id": "1001"})
    _get(vendor, f"/users/{JANE_ID}/conversations", {"conversations": []})
    hits = _connector(ctx).locate(Identities([Identity(IdentityType.ACCOUNT_ID, "1001")]))
    assert hits.found
    assert Identity(IdentityType.EMAIL, JANE_EMAIL) in hits.learned


def test_locate_ignores_a_reference_id_hit_that_does_not_match(
    ctx: ConnectorContext, vendor: responses.RequestsMock
) -> None:
    _get(vendor, "/users", _users_page(_user(id=DECOY_ID, reference_id="10010")), query={"reference_id": "1001"})
    hits = _connector(ctx).locate(Identities([Identity(IdentityType.ACCOUNT_ID, "1001")]))
    assert not hits.found
    assert hits.learned == []


def test_locate_by_user_id_that_is_gone_finds_nothing(ctx: ConnectorContext, vendor: responses.RequestsMock) -> None:
    _get(vendor, f"/users/{JANE_ID}", _error(404, "USER_NOT_FOUND", "user not found"), status=404)
    assert not _connector(ctx).locate(_uid()).found


def test_locate_with_a_404_search_finds_nothing(ctx: ConnectorContext, vendor: responses.RequestsMock) -> None:
    _get(vendor, "/users", _error(404, "USER_NOT_FOUND", "user not found"), query={"email": JANE_EMAIL}, status=404)
    assert not _connector(ctx).locate(_email()).found


# ---------------------------------------------------------------------------- export


def test_export_profile_conversations_and_messages_over_three_pages(
    ctx: ConnectorContext, vendor: responses.RequestsMock
) -> None:
    _get(vendor, "/users", _users_page(_user()), query={"email": JANE_EMAIL})
    _get(vendor, f"/users/{JANE_ID}", _user())
    _get(vendor, f"/users/{JANE_ID}/conversations", {"conversations": [{"id": "c1"}, {"id": "c2"}]})
    _get(vendor, "/conversations/c1", _conversation("c1", "assigned"))
    for page, (start, count) in enumerate([(0, 50), (50, 50), (100, 20)], start=1):
        _get(vendor, "/conversations/c1/messages", _messages_page("c1", start, count, page),
             query={"page": str(page), "items_per_page": "50"})
    _get(vendor, "/conversations/c2", _conversation("c2", "resolved"))
    _get(vendor, "/conversations/c2/messages", _messages_page("c2", 0, 2, 1),
         query={"page": "1", "items_per_page": "50"})

    records = list(_connector(ctx).export(_email()))
    users = [r for r in records if r.entity == "user"]
    conversations = [r for r in records if r.entity == "conversations"]
    messages = [r for r in records if r.entity == "messages"]
    assert [(r.record_id, r.fields["last_name"]) for r in users] == [(JANE_ID, "Doe")]
    assert [(r.record_id, r.fields["status"]) for r in conversations] == [("c1", "assigned"), ("c2", "resolved")]
    assert len(messages) == 122
    assert len({r.record_id for r in messages}) == 122
    assert {r.fields["conversation_id"] for r in messages} == {"c1", "c2"}


def test_message_paging_stops_on_a_short_page(ctx: ConnectorContext, vendor: responses.RequestsMock) -> None:
    _get(vendor, f"/users/{JANE_ID}", _user())
    _get(vendor, f"/users/{JANE_ID}/conversations", {"conversations": [{"id": "c1"}]})
    _get(vendor, "/conversations/c1/messages", _messages_page("c1", 0, 2, 1, 2),
         query={"page": "1", "items_per_page": "2"})
    _get(vendor, "/conversations/c1/messages", _messages_page("c1", 2, 1, 2, 2),
         query={"page": "2", "items_per_page": "2"})
    records = list(_connector(ctx, items_per_page=2).export(_uid(), entities=["messages"]))
    assert [r.record_id for r in records] == ["c1-m0", "c1-m1", "c1-m2"]


def test_message_paging_stops_on_an_empty_page(ctx: ConnectorContext, vendor: responses.RequestsMock) -> None:
    # 100 messages at 50 a page: page 2 is full, and only an empty page 3 says there is no more.
    _get(vendor, f"/users/{JANE_ID}", _user())
    _get(vendor, f"/users/{JANE_ID}/conversations", {"conversations": [{"id": "c1"}]})
    for page, (start, count) in enumerate([(0, 50), (50, 50), (100, 0)], start=1):
        _get(vendor, "/conversations/c1/messages", _messages_page("c1", start, count, page),
             query={"page": str(page), "items_per_page": "50"})
    records = list(_connector(ctx).export(_uid(), entities=["messages"]))
    assert len(records) == 100 and len(vendor.calls) == 5


def test_message_pages_are_never_asked_above_freshchats_cap(
    ctx: ConnectorContext, vendor: responses.RequestsMock
) -> None:
    # Issue 18 point 6: FreshChat answers at most 50 messages a page and says nothing of more pages, so asking
    # for 100 made a full page of 50 look like the last one and the export stopped after page 1.
    _get(vendor, f"/users/{JANE_ID}", _user())
    _get(vendor, f"/users/{JANE_ID}/conversations", {"conversations": [{"id": "c1"}]})
    for page, (start, count) in enumerate([(0, 50), (50, 10)], start=1):
        _get(vendor, "/conversations/c1/messages", _messages_page("c1", start, count, page),
             query={"page": str(page), "items_per_page": "50"})
    connector = FreshchatConnector("freshchat", _connector(ctx).http, items_per_page=100)  # past the settings
    records = list(connector.export(_uid(), entities=["messages"]))
    assert len(records) == 60


def test_export_of_a_user_that_is_gone_is_empty(ctx: ConnectorContext, vendor: responses.RequestsMock) -> None:
    _get(vendor, f"/users/{JANE_ID}", _error(404, "USER_NOT_FOUND", "user not found"), status=404)
    assert list(_connector(ctx).export(_uid())) == []


def test_export_rejects_an_unknown_entity(ctx: ConnectorContext) -> None:
    with pytest.raises(PermanentError, match="unknown entity tickets"):
        list(_connector(ctx).export(_uid(), entities=["tickets"]))


# ---------------------------------------------------------------------------- erase


def test_erase_requests_user_deletion_where_the_tenant_has_it(
    ctx: ConnectorContext, vendor: responses.RequestsMock
) -> None:
    _get(vendor, f"/users/{JANE_ID}", _user())
    _get(vendor, f"/users/{JANE_ID}/conversations", {"conversations": [{"id": "c1"}]})
    _reads(vendor, "c1")  # hers alone: the user may be deleted
    # [U] no FreshChat source has this call; modelled on the documented agent-deletion answer.
    _send(vendor, responses.DELETE, f"/users/{JANE_ID}",
          {"code": 202, "status": "ACCEPTED", "message": "User deletion request accepted"}, status=202)
    receipt = _connector(ctx, supports_user_delete=True).erase(_uid())
    assert receipt.changed == {"user": 1}
    assert receipt.manual_steps == []
    assert len(receipt.vendor_refs) == 1
    assert JANE_ID in receipt.vendor_refs[0] and "requested" in receipt.vendor_refs[0]
    assert "ACCEPTED: User deletion request accepted" in receipt.vendor_refs[0]


BLANKED = {"first_name": "", "last_name": "", "email": "", "phone": "", "reference_id": "",
           "properties": [{"name": "plan", "value": ""}]}


# Issue 18 point 5: 400, 401 and 403 used to fail the whole erasure; any 4xx but 429 now falls back.
@pytest.mark.parametrize("status", [400, 401, 403, 404, 405, 422])
def test_erase_falls_back_to_blanking_when_delete_is_not_available(
    ctx: ConnectorContext, vendor: responses.RequestsMock, status: int
) -> None:
    _get(vendor, f"/users/{JANE_ID}", _user())
    _get(vendor, f"/users/{JANE_ID}/conversations", {"conversations": []})
    _send(vendor, responses.DELETE, f"/users/{JANE_ID}", _error(status, "NOT_SUPPORTED", "not supported"),
          status=status)
    _send(vendor, responses.PUT, f"/users/{JANE_ID}", _user(**BLANKED), sent=BLANKED)
    receipt = _connector(ctx, supports_user_delete=True).erase(_uid())
    assert receipt.changed == {"user": 1}
    assert receipt.vendor_refs == []
    assert len(receipt.manual_steps) == 1
    assert receipt.manual_steps[0].startswith("Forget the contact in FreshChat (Contacts > Forget)")
    assert JANE_ID in receipt.manual_steps[0]
    assert any(f"HTTP {status}" in line for line in receipt.details)


def test_erase_by_default_blanks_the_profile_and_asks_to_forget_the_contact(
    ctx: ConnectorContext, vendor: responses.RequestsMock
) -> None:
    # Issue 18 point 5: no FreshChat source lists DELETE /users/{id}, so none is sent unless the tenant has one.
    _get(vendor, f"/users/{JANE_ID}", _user())
    _get(vendor, f"/users/{JANE_ID}/conversations", {"conversations": [{"id": "c1"}]})
    _reads(vendor, "c1")
    _send(vendor, responses.PUT, f"/users/{JANE_ID}", _user(**BLANKED), sent=BLANKED)
    connector = _connector(ctx)
    receipt = connector.erase(_uid())
    assert not any(c.request.method == "DELETE" for c in vendor.calls)
    assert receipt.changed == {"user": 1} and receipt.vendor_refs == []
    (step,) = receipt.manual_steps
    assert step == (f"Forget the contact in FreshChat (Contacts > Forget): user id {JANE_ID} (removes its "
                    "conversations and messages)")
    assert "DELETE" not in (connector.policies()["user"].erase or "")


def test_erase_with_delete_switched_off_blanks_a_searched_user_after_reading_its_profile(
    ctx: ConnectorContext, vendor: responses.RequestsMock
) -> None:
    _get(vendor, "/users", _users_page(_user(properties=[])), query={"email": JANE_EMAIL})
    _get(vendor, f"/users/{JANE_ID}/conversations", {"conversations": []})
    _get(vendor, f"/users/{JANE_ID}", _user())  # the full profile lists the properties to blank
    _send(vendor, responses.PUT, f"/users/{JANE_ID}", _user(**BLANKED), sent=BLANKED)
    receipt = _connector(ctx, supports_user_delete=False).erase(_email())
    assert receipt.changed == {"user": 1}
    assert receipt.manual_steps and "Contacts > Forget" in receipt.manual_steps[0]
    assert JANE_EMAIL not in repr(receipt.to_dict()).lower()


def test_erase_of_messages_alone_is_unsupported(ctx: ConnectorContext) -> None:
    with pytest.raises(UnsupportedAction):
        _connector(ctx).erase(_uid(), entities=["messages"])


# ---------------------------------------------------------------------------- restrict / lift


def test_restrict_resolves_open_conversations_and_sets_the_property(
    ctx: ConnectorContext, vendor: responses.RequestsMock
) -> None:
    _get(vendor, f"/users/{JANE_ID}", _user())
    _get(vendor, f"/users/{JANE_ID}/conversations", {"conversations": [{"id": "c1"}, {"id": "c2"}]})
    _get(vendor, "/conversations/c1", _conversation("c1", "assigned"))
    _get(vendor, "/conversations/c2", _conversation("c2", "resolved"))
    for cid in ("c1", "c2"):
        _get(vendor, f"/conversations/{cid}/messages", _messages_page(cid, 0, 2, 1),
             query={"page": "1", "items_per_page": "50"})
    _send(vendor, responses.PUT, "/conversations/c1", _conversation("c1", "resolved"), sent={"status": "resolved"})
    props = [{"name": "plan", "value": "pro"}, {"name": "gdpr_restricted", "value": "true"}]
    _send(vendor, responses.PUT, f"/users/{JANE_ID}", _user(properties=props), sent={"properties": props})
    receipt = _connector(ctx).restrict(_uid())
    assert receipt.changed == {"conversations": 1, "user": 1}


def test_lift_sets_the_configured_property_to_false(ctx: ConnectorContext, vendor: responses.RequestsMock) -> None:
    current = [{"name": "dsar_hold", "value": "true"}, {"name": "plan", "value": "pro"}]
    _get(vendor, f"/users/{JANE_ID}", _user(properties=current))
    props = [{"name": "dsar_hold", "value": "false"}, {"name": "plan", "value": "pro"}]
    _send(vendor, responses.PUT, f"/users/{JANE_ID}", _user(properties=props), sent={"properties": props})
    receipt = _connector(ctx, restricted_property="dsar_hold").lift_restriction(_uid())
    assert receipt.changed == {"user": 1}


# ---------------------------------------------------------------------------- a write that did nothing (issue 10 pt 9)


def _nothing_changed(call: str, answer: str) -> str:
    return f"{call} answered that it changed nothing ({answer}); the task is not done"


def test_a_blanking_put_that_returns_the_user_unchanged_fails(
    ctx: ConnectorContext, vendor: responses.RequestsMock
) -> None:
    # PUT /users/{id} answers the user [L: idjoo openapi `user`]: one still holding e-mail and phone was not blanked.
    _get(vendor, f"/users/{JANE_ID}", _user())
    _get(vendor, f"/users/{JANE_ID}/conversations", {"conversations": []})
    _send(vendor, responses.PUT, f"/users/{JANE_ID}", _user(**{**BLANKED, "email": JANE_EMAIL, "phone": JANE_PHONE}),
          sent=BLANKED)
    with pytest.raises(PermanentError) as info:
        _connector(ctx).erase(_uid())
    assert info.value.message == _nothing_changed("PUT /users/{id}", "email, phone still set in the returned user")
    assert JANE_EMAIL not in info.value.message


def test_a_restriction_property_the_reply_does_not_show_fails(
    ctx: ConnectorContext, vendor: responses.RequestsMock
) -> None:
    _get(vendor, f"/users/{JANE_ID}", _user(properties=[{"name": "plan", "value": "pro"}]))
    sent = [{"name": "plan", "value": "pro"}, {"name": "gdpr_restricted", "value": "true"}]
    _send(vendor, responses.PUT, f"/users/{JANE_ID}", _user(properties=[{"name": "plan", "value": "pro"}]),
          sent={"properties": sent})
    with pytest.raises(PermanentError) as info:
        _connector(ctx).restrict(_uid(), entities=["user"])
    assert info.value.message == _nothing_changed("PUT /users/{id}",
                                                  "no gdpr_restricted in the returned user's properties")


def test_a_lift_the_reply_shows_still_restricted_fails(ctx: ConnectorContext, vendor: responses.RequestsMock) -> None:
    current = [{"name": "gdpr_restricted", "value": "true"}]
    _get(vendor, f"/users/{JANE_ID}", _user(properties=current))
    _send(vendor, responses.PUT, f"/users/{JANE_ID}", _user(properties=current),
          sent={"properties": [{"name": "gdpr_restricted", "value": "false"}]})
    with pytest.raises(PermanentError, match=r"gdpr_restricted=true in the returned user's properties"):
        _connector(ctx).lift_restriction(_uid())


def test_a_resolve_the_reply_shows_still_open_fails(ctx: ConnectorContext, vendor: responses.RequestsMock) -> None:
    _get(vendor, f"/users/{JANE_ID}", _user())
    _get(vendor, f"/users/{JANE_ID}/conversations", {"conversations": [{"id": "c1"}]})
    _get(vendor, "/conversations/c1", _conversation("c1", "assigned"))
    _get(vendor, "/conversations/c1/messages", _messages_page("c1", 0, 2, 1),
         query={"page": "1", "items_per_page": "50"})
    _send(vendor, responses.PUT, "/conversations/c1", _conversation("c1", "assigned"), sent={"status": "resolved"})
    with pytest.raises(PermanentError) as info:
        _connector(ctx).restrict(_uid(), entities=["conversations"])
    assert info.value.message == _nothing_changed("PUT /conversations/{id}", "status=assigned")


# ---------------------------------------------------------------------------- check and errors


def test_check_probes_with_a_non_personal_address(ctx: ConnectorContext, vendor: responses.RequestsMock) -> None:
    _get(vendor, "/users", _users_page(), query={"email": "dsar-healthcheck@invalid"})
    health = _connector(ctx).check()
    assert health.ok and health.problems == []


def test_check_reports_bad_credentials(ctx: ConnectorContext, vendor: responses.RequestsMock) -> None:
    _get(vendor, "/users", _error(401, "UNAUTHORIZED", "Invalid token"), query={"email": "dsar-healthcheck@invalid"},
         status=401)
    health = _connector(ctx).check()
    assert not health.ok
    assert "401" in health.problems[0] and "credentials" in health.problems[0]
    assert TOKEN not in health.problems[0]


def test_401_during_locate_is_permanent_and_names_the_call(
    ctx: ConnectorContext, vendor: responses.RequestsMock
) -> None:
    _get(vendor, "/users", _error(401, "UNAUTHORIZED", "Invalid token"), query={"email": JANE_EMAIL}, status=401)
    with pytest.raises(PermanentError) as err:
        _connector(ctx).locate(_email())
    assert not isinstance(err.value, TransientError)
    text = str(err.value)
    assert "GET https://acme.freshchat.com/v2/users" in text and "401" in text
    assert JANE_EMAIL not in text and TOKEN not in text


def test_429_waits_for_retry_after_then_succeeds(
    ctx: ConnectorContext, vendor: responses.RequestsMock, sleeps: list[float]
) -> None:
    _get(vendor, "/users", _error(429, "TOO_MANY_REQUESTS", "rate limit exceeded"), query={"email": JANE_EMAIL},
         status=429, headers={"Retry-After": "7"})
    _get(vendor, "/users", _users_page(_user()), query={"email": JANE_EMAIL})
    _get(vendor, f"/users/{JANE_ID}/conversations", {"conversations": []})
    assert _connector(ctx).locate(_email()).found
    assert sleeps == [7.0]


def test_500_then_success(ctx: ConnectorContext, vendor: responses.RequestsMock, sleeps: list[float]) -> None:
    _get(vendor, f"/users/{JANE_ID}", _error(500, "INTERNAL_SERVER_ERROR", "oops"), status=500)
    _get(vendor, f"/users/{JANE_ID}", _user())
    _get(vendor, f"/users/{JANE_ID}/conversations", {"conversations": []})
    assert _connector(ctx).locate(_uid()).found
    assert len(sleeps) == 1 and 0 < sleeps[0] <= FAST_RETRY.backoff_max


def test_500_until_retries_run_out_is_transient_and_names_the_call(
    ctx: ConnectorContext, vendor: responses.RequestsMock, sleeps: list[float]
) -> None:
    for _ in range(FAST_RETRY.attempts):
        _get(vendor, "/users", _error(500, "INTERNAL_SERVER_ERROR", "oops"), query={"email": JANE_EMAIL}, status=500)
    with pytest.raises(TransientError) as err:
        _connector(ctx).locate(_email())
    text = str(err.value)
    assert "GET https://acme.freshchat.com/v2/users" in text
    assert f"after {FAST_RETRY.attempts} attempts" in text and "HTTP 500" in text
    assert JANE_EMAIL not in text
    assert len(sleeps) == FAST_RETRY.attempts - 1
