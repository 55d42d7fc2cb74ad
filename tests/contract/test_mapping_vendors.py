"""The read-only field listings `dsar datamap scan` asks vendor systems for (issue 13), strict `responses` mocks."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import responses
from responses import matchers

from connectors.base import ConnectorContext, PermanentError
from connectors.freshchat import FreshchatConnector
from connectors.matomo import MatomoConnector
from connectors.salesmanago import SalesmanagoConnector
from tests.contract import test_freshchat, test_matomo, test_mautic, test_salesmanago
from tests.contract.conftest import FAST_RETRY


def test_mautic_lists_contact_fields_page_by_page(vendor: responses.RequestsMock, ctx: ConnectorContext) -> None:
    fields = [{"id": 1, "alias": "firstname", "label": "First Name", "type": "text", "group": "core"},
              {"id": 2, "alias": "email", "label": "Email", "type": "email", "group": "core"},
              {"id": 40, "alias": "fodselsnummer", "label": "Fødselsnummer", "type": "text", "group": "personal"}]
    for start, page in ((0, fields[:2]), (2, fields[2:])):
        vendor.get(f"{test_mautic.BASE}/api/fields/contact", json={"total": 3, "fields": page},
                   match=[matchers.query_param_matcher({"start": str(start), "limit": "2"}), test_mautic.auth()])
    listed = test_mautic.connector(ctx).custom_fields()
    assert [f["name"] for f in listed] == ["firstname", "email", "fodselsnummer"]
    assert listed[2] == {"name": "fodselsnummer", "label": "Fødselsnummer", "type": "text", "group": "personal"}


def test_matomo_lists_custom_dimensions_of_each_admin_site(vendor: responses.RequestsMock,
                                                          ctx: ConnectorContext) -> None:
    test_matomo.expect(vendor, "SitesManager.getSitesIdWithAdminAccess", {}, [1])
    test_matomo.expect(vendor, "CustomDimensions.getConfiguredCustomDimensions", {"idSite": "1"}, [
        {"idcustomdimension": 3, "idsite": 1, "name": "Customer e-mail", "index": 1, "scope": "visit",
         "active": True}])
    connector = MatomoConnector.from_settings("matomo", test_matomo.settings(), ctx, retry=FAST_RETRY)
    assert connector.custom_fields() == [{"name": "dimension3", "label": "Customer e-mail", "type": "visit",
                                          "site": "1", "active": True}]


def test_freshchat_lists_property_names_never_values(vendor: responses.RequestsMock, ctx: ConnectorContext) -> None:
    now = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
    vendor.get(f"{test_freshchat.BASE}/users", json={"users": [
        {"id": "u1", "properties": [{"name": "plan", "value": "gold-tier"}, {"name": "kundenr", "value": "7788991"}]},
        {"id": "u2", "properties": [{"name": "plan", "value": "free"}]}]},
        match=[matchers.query_param_matcher({"updated_from": "2025-11-30T12:00:00.000Z",
                                             "updated_to": "2026-11-30T12:00:00.000Z",
                                             "items_per_page": "50", "page": "1"}), test_freshchat.AUTH])
    connector = FreshchatConnector.from_settings("freshchat", test_freshchat.SETTINGS, ctx, retry=FAST_RETRY)
    listed = connector.custom_fields(now=now)
    assert [f["name"] for f in listed] == ["plan", "kundenr"]
    assert "7788991" not in str(listed) and "gold-tier" not in str(listed)


def test_salesmanago_says_it_cannot_list_properties(vendor: responses.RequestsMock, ctx: ConnectorContext) -> None:
    connector = SalesmanagoConnector.from_settings("salesmanago", test_salesmanago.SETTINGS, ctx, retry=FAST_RETRY)
    with pytest.raises(PermanentError, match="no known SALESmanago API call lists contact properties"):
        connector.custom_fields()
