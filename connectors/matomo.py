"""Matomo (self-hosted or Cloud) through the HTTP Reporting API: PrivacyManager GDPR tools + Live.

Matomo keeps no person record: data lives per visit (`idsite` + `idvisit`). A person is found
through the visits' `userId` (what the site passes to `setUserId`), the 16-hex `visitorId`
(which Matomo derives from the userId, or the random `_pk_id` cookie id before login), and
then exported and deleted visit by visit.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import orjson
import structlog

from connectors.base import (
    N_,
    Connector,
    ConnectorContext,
    ConnectorError,
    EntityPolicy,
    Health,
    Hits,
    Identities,
    Identity,
    IdentityType,
    Note,
    PermanentError,
    Receipt,
    Record,
    UnsupportedAction,
    note,
)
from connectors.http import HttpClient, RetryPolicy, paginate
from connectors.ratelimit import make_rate_limiter
from connectors.redact import redact
from connectors.retention import (
    MECHANISM_RUN,
    Due,
    Keep,
    Period,
    RetentionRule,
    VendorRetentionSpec,
    today_utc,
    vendor_rule,
)
from connectors.vendor_settings import MatomoSettings, parse

log = structlog.get_logger(__name__)

# PrivacyManager.findDataSubjects asks Live for at most this many visits (hard-coded in
# plugins/PrivacyManager/API.php); a full answer at this size means "truncated" whatever
# filter_limit we sent.
FIND_CAP = 401
VISITS = "visits"  # the entity locate counts: whole visits
# The whole history, as findDataSubjects itself queries it.
ALL_TIME = ("range", "1998-01-01,today")
_VISITOR_ID = re.compile(r"^[0-9a-f]{16}$")
_USER_ID_IDENTITIES = {"email": IdentityType.EMAIL, "account_id": IdentityType.ACCOUNT_ID}
# Why a visit that a search reached is left alone: it carries a userId that is not the subject's
# (a visitor id shared by two people, e.g. one computer, or a site with enable_userid_overwrites_visitorid=0).
OTHER_USER_ID = N_("visit of another userId on a shared visitor id")
# Columns that identify one exported row per log table (values are strings in the export).
_ROW_KEYS: dict[str, tuple[str, ...]] = {
    "log_visit": ("idvisit",),
    "log_link_visit_action": ("idlink_va",),
    "log_conversion": ("idvisit", "idgoal", "buster"),
    "log_conversion_item": ("idvisit", "idorder", "idaction_sku"),
}
# A write whose reply says it changed nothing: the task fails (issue 10 point 9), quoting the reply.
NOTHING_CHANGED = N_("{call} answered that it changed nothing ({answer}); the task is not done")
_LOG_ACTION_PREFIX = "log_action_"  # lookup lists: log_action_<table>_<column> -> {idaction, name}
# Retention (retention_rules with by: dsar): a visit's age counts from its last action, as Matomo's own purge.
RETENTION_START = N_("the visit's last action")
RETENTION_FIELD = "visit_last_action_time"
KEPT_REQUEST = N_("kept: the person has an open request")

CAVEATS = (
    N_("log_action rows (URLs, page titles) are not deleted at once: Matomo's scheduled task removes them "
       "once no remaining visit uses them"),
    N_("only the Matomo database is affected: web-server access logs are not, and re-importing such logs "
       "would re-create the visits"),
)
# deleteDataSubjects remembers the visits' dates for invalidation (plugins/PrivacyManager/Model/DataSubjects.php
# L121-146, since Matomo 3.10.0): the reports are rebuilt by the next archiving run, no manual step.
ARCHIVES_NOTE = N_(
    "archived reports: PrivacyManager.deleteDataSubjects invalidated the reports of site(s) {sites} for the "
    "visits' dates (Matomo 3.10 and later); Matomo rebuilds them at its next archiving run (core:archive or "
    "browser-triggered archiving), so no manual step is needed"
)

if TYPE_CHECKING:
    import requests


def user_id_hash(user_id: str) -> str:
    """The visitorId Matomo stores for a userId (enable_userid_overwrites_visitorid=1, the default)."""
    return hashlib.sha1(user_id.encode("utf-8")).hexdigest()[:16]  # Matomo's own scheme, not security


def segment_condition(dimension: str, value: str, op: str = "==") -> str:
    """One segment condition; the value is URL-encoded three times.

    Matomo url-decodes a segment value three times: the whole segment (core/Segment.php L149-177, which
    keeps the decoded form when both parse alike), each condition (core/Segment/SegmentExpression.php
    L120) and each value (L140); a maintainer confirms it in matomo-org/matomo PR #13481. Encoded once,
    `jane+news@example.com` is searched as `jane news@example.com` and a `%xx` in a value is decoded too.
    """
    return f"{dimension}{op}{quote(quote(quote(value, safe=''), safe=''), safe='')}"


class MatomoConnector(Connector):
    """Locate, export and erase a person's Matomo visits.

    Behaviour resting on vendor facts or on a judgement, and what switches it:
    - `findDataSubjects` asks Live for 401 visits whatever `filter_limit` the HTTP request sends
      ([V] PrivacyManager/API.php L100, core/API/Request.php L127, L579-592): we still send it
      (setting `filter_limit`, default 401) and treat an answer of `min(filter_limit, 401)` or
      more rows as truncated, then page through
      `Live.getLastVisitsDetails` one site at a time (setting `page_size`; `id_sites: all` is
      resolved with SitesManager.getSitesIdWithAdminAccess, as Live over HTTP with `all` is
      unverified) until a short page.
    - which identifier the site passes as userId (e-mail or account id): setting `user_id_identity`.
    - archived reports: deleteDataSubjects invalidates the archives of the deleted visits' dates
      itself (since Matomo 3.10, [V] PrivacyManager/Model/DataSubjects.php L121-146), so the 'User
      IDs' report loses the userId at the next archiving run; an erasure needs no manual step, and
      the receipt says so.
    - searching `visitorId==<sha1(userId)[:16]>` assumes `enable_userid_overwrites_visitorid=1`
      (Matomo's default); where it is off the search simply finds nothing extra.
    Only the subject's data (issue 9): a visit with a userId that is not the subject's is someone else's
    even on one of their visitor ids (one computer, two people); it is never counted, exported, erased or
    learned from, only counted in `skipped`. A visitor id is learned only from a visit carrying the
    subject's userId; no userId is ever learned.
    token_auth always travels in the POST body, never the URL: "secure only" tokens are rejected
    in a query string, and URLs end up in access logs.
    """

    # "visits" is what locate counts and means a whole visit (every log table); the others are
    # the export's table keys ("log_action" stands for the log_action_<table>_<column> lookups).
    entities = ("visits", "log_visit", "log_link_visit_action", "log_conversion", "log_conversion_item", "log_action")

    def __init__(
        self,
        name: str,
        http: HttpClient,
        token: str,
        *,
        id_sites: str = "all",
        filter_limit: int = FIND_CAP,
        page_size: int = 100,
        chunk_size: int = 100,
        user_id_identity: str = "email",
        retention: Sequence[VendorRetentionSpec] = (),
    ) -> None:
        self.name = name
        self.http = http
        self._token = token
        self.id_sites = id_sites
        self.filter_limit = filter_limit
        self.page_size = page_size
        self.chunk_size = chunk_size
        self.user_id_identity = _USER_ID_IDENTITIES[user_id_identity]
        self.retention = tuple(retention)

    @classmethod
    def from_settings(
        cls,
        name: str,
        settings: Mapping[str, Any],
        ctx: ConnectorContext,
        *,
        retry: RetryPolicy | None = None,
        session: requests.Session | None = None,
    ) -> MatomoConnector:
        config = parse(MatomoSettings, name, settings)
        token = ctx.secret(name, "token_env", config.token_env)
        http = HttpClient(
            name,
            config.base_url,
            timeout=(min(5.0, config.timeout_s), config.timeout_s),
            retry=retry,
            rate_limiter=make_rate_limiter(f"matomo:{name}", config.rate_per_second, ctx.redis_url, ctx.namespace),
            session=session,
        )
        return cls(
            name,
            http,
            token,
            id_sites=config.id_sites,
            filter_limit=config.filter_limit,
            page_size=config.page_size,
            chunk_size=config.chunk_size,
            user_id_identity=config.user_id_identity,
            retention=config.retention_rules,
        )

    # -- the contract -------------------------------------------------------------------------

    def accepts(self) -> set[IdentityType]:
        return {self.user_id_identity, IdentityType.MATOMO_VISITOR_ID, IdentityType.MATOMO_USER_ID}

    def policies(self) -> dict[str, EntityPolicy]:
        whole_visit = Note(N_("PrivacyManager.deleteDataSubjects (whole visits, synchronous)"))
        # Restriction is planned so that the request reports it as not possible, with the reason,
        # rather than silently skipping the system (restrict() raises UnsupportedAction).
        no_restriction = Note(N_("not possible: Matomo has no per-person restriction (browser-side opt-out only)"))
        policies = {entity: EntityPolicy.of(whole_visit, None) for entity in self.entities}
        policies[VISITS] = EntityPolicy.of(whole_visit, no_restriction)
        policies["log_action"] = EntityPolicy.of(Note(N_("removed by Matomo's scheduled task once unused")), None)
        return policies

    def locate(self, identities: Identities) -> Hits:
        visits, others = self._subject_visits(identities)
        own_user_ids = {_fold(u) for u in self._user_ids(identities)}
        learned: list[Identity] = []
        seen: set[str] = set()
        for visit in visits:
            # Only a visit whose userId is the subject's teaches a visitor id; an anonymous visit was
            # found by a visitor id already known, and one of another userId is never the subject's.
            user_id = str(visit.get("userId") or "")
            if not user_id or _fold(user_id) not in own_user_ids:
                continue
            value = str(visit.get("visitorId") or "").strip().lower()
            if not _VISITOR_ID.match(value) or value in seen:
                continue
            seen.add(value)
            identity = Identity.learned(IdentityType.MATOMO_VISITOR_ID, value, self.name, note(
                N_("{system}: visit {site}/{visit} (its userId is the subject's), field {field}"), system=self.name,
                site=str(visit["idSite"]), visit=str(visit["idVisit"]), field="visitorId"))
            if identity not in identities:
                learned.append(identity)
        hits = Hits(self.name, found=bool(visits), counts={VISITS: len(visits)} if visits else {}, learned=learned)
        if others:
            hits.skipped[VISITS] = {OTHER_USER_ID: others}
        return hits

    def export(self, identities: Identities, entities: Iterable[str] | None = None) -> Iterator[Record]:
        wanted = None if entities is None else set(entities)
        visits, _others = self._subject_visits(identities)
        seen: set[tuple[str, str]] = set()  # lookup rows (log_action_*) repeat across chunks
        for chunk in _chunks(visits, self.chunk_size):
            payload = self._call("PrivacyManager.exportDataSubjects", _visits_params(chunk))
            if not isinstance(payload, dict):
                raise PermanentError(self.name, "PrivacyManager.exportDataSubjects returned no per-table object")
            for table, rows in payload.items():
                if not _selected(table, wanted):
                    continue
                # Plugins may export anything through the PrivacyManager.exportDataSubjects event:
                # keep what is not a list of rows rather than drop it.
                for row in rows if isinstance(rows, list) else [rows]:
                    fields = row if isinstance(row, dict) else {"value": row}
                    key = (table, _record_id(table, fields))
                    if key in seen:
                        continue
                    seen.add(key)
                    yield Record(entity=table, record_id=key[1], fields=fields)

    def _still_there(self, identities: Identities, chunk: list[dict[str, Any]]) -> bool:
        wanted = {(str(v["idSite"]), str(v["idVisit"])) for v in chunk}
        found, _others = self._subject_visits(identities)
        return any((str(v["idSite"]), str(v["idVisit"])) in wanted for v in found)

    def erase(self, identities: Identities, entities: Iterable[str] | None = None) -> Receipt:
        receipt = Receipt(self.name, "erase")
        if entities is not None and not set(entities) & set(self.entities):
            receipt.note(N_("no Matomo entity selected; nothing erased"))
            return receipt
        visits, others = self._subject_visits(identities)
        if others:
            receipt.skipped[VISITS] = {OTHER_USER_ID: others}
            receipt.note(N_("{count} visit(s) on a shared visitor id carry another userId: left alone"), count=others)
        if not visits:
            receipt.note(N_("no visits found; nothing to erase"))
            return receipt
        calls = 0
        # Chunked to keep the POST body small (Matomo PR #12803).
        for chunk in _chunks(visits, self.chunk_size):
            counts = self._call("PrivacyManager.deleteDataSubjects", _visits_params(chunk))
            calls += 1
            if not isinstance(counts, dict):
                raise PermanentError(self.name, "PrivacyManager.deleteDataSubjects returned no per-table counts")
            numbers: dict[str, int] = {}
            for table, count in counts.items():
                try:
                    numbers[str(table)] = int(count)
                except (TypeError, ValueError):
                    raise PermanentError(
                        self.name, f"PrivacyManager.deleteDataSubjects returned a non-numeric count for {table}"
                    ) from None
            # The reply counts the rows deleted per log table ([V] PrivacyManager DataSubjectsTest); visits we
            # just found that delete no row anywhere were not deleted by this call: not "done" (issue 10
            # point 9), unless a fresh search shows them gone (deleted meanwhile, or by a retried call's first
            # attempt whose answer was lost).
            if not any(numbers.values()):
                if not self._still_there(identities, chunk):
                    receipt.note(N_("{count} visit(s) were already gone when deleteDataSubjects ran"),
                                 count=len(chunk))
                    continue
                words = ", ".join(f"{table}={count}" for table, count in numbers.items()) or "no table counts"
                raise PermanentError.of(self.name, note(
                    NOTHING_CHANGED, call=f"PrivacyManager.deleteDataSubjects ({len(chunk)} visit(s))",
                    answer=words[:200]))
            for table, count in numbers.items():
                receipt.changed[table] = receipt.changed.get(table, 0) + count
        receipt.note(N_("deleted {count} visits with {calls} PrivacyManager.deleteDataSubjects call(s); Matomo "
                        "deletes whole visits from every log table"), count=len(visits), calls=calls)
        if entities is not None and VISITS not in entities and set(self.entities) - set(entities) - {VISITS}:
            receipt.note(N_("Matomo cannot delete part of a visit: all its log tables were deleted"))
        for caveat in CAVEATS:
            receipt.note(caveat)
        sites = sorted({str(v["idSite"]) for v in visits}, key=_site_order)
        receipt.note(ARCHIVES_NOTE, sites=", ".join(sites))
        return receipt

    def restrict(self, identities: Identities, entities: Iterable[str] | None = None) -> Receipt:
        raise UnsupportedAction.of(self.name, Note(N_(
            "Matomo has no per-person server-side restriction: its opt-out is browser-side only "
            "(opt-out cookie / consent); the integrating site must stop sending this person's userId "
            "or stop tracking them, and past visits can only be erased")))

    def lift_restriction(self, identities: Identities, entities: Iterable[str] | None = None) -> Receipt:
        raise UnsupportedAction.of(self.name, Note(N_(
            "Matomo has no per-person server-side restriction to lift: opt-out and consent are browser-side "
            "only; the integrating site decides whether it tracks this person again")))

    def custom_dimensions(self) -> list[dict[str, Any]]:
        """Custom dimensions configured on the searched sites (names and scopes, never values).

        `CustomDimensions.getConfiguredCustomDimensions(idSite)` answers a list of {idcustomdimension, idsite,
        name, index, scope, active, ...} [L: matomo-org/matomo plugins/CustomDimensions/API.php; the plugin may be
        absent, which Matomo answers with a `result: error` envelope, a PermanentError here].
        """
        sites = self._admin_sites() if self.id_sites == "all" else self.id_sites.split(",")
        out: list[dict[str, Any]] = []
        for site in sites:
            found = self._call("CustomDimensions.getConfiguredCustomDimensions", [("idSite", site)])
            for dim in found if isinstance(found, list) else []:
                if isinstance(dim, dict) and dim.get("idcustomdimension") is not None:
                    out.append({"name": f"dimension{dim['idcustomdimension']}", "label": str(dim.get("name") or ""),
                                "type": str(dim.get("scope") or ""), "site": site,
                                "active": bool(dim.get("active"))})
        return out

    custom_fields = custom_dimensions  # what `dsar datamap scan` asks every vendor for

    # -- retention (docs/retention.md, "Matomo") ---------------------------------------------------------
    # Matomo's own "delete old raw data" can be set through the API (PrivacyManager.setDeleteLogsSettings, super
    # user + password, @internal: plugins/PrivacyManager/API.php L286-300) but not read (no getter in API.php; only
    # the admin UI, Controller.php L96-139, shows it), so dsar neither trusts nor changes it: a `by: dsar` rule
    # finds visits by age with findDataSubjects and deletes them with deleteDataSubjects, as an erasure does.
    # The age is the visit's last action, as Matomo's own purge counts it (LogDataPurger.php L161-164), through the
    # segment visitEndServerDate = DATE(log_visit.visit_last_action_time) in UTC (CoreHome/Columns/
    # VisitLastActionDate.php): `visitEndServerDate<cutoff` is exactly connectors.retention's boundary.

    def retention_rules(self) -> list[RetentionRule]:
        return [vendor_rule(self.name, spec, Note(RETENTION_START), RETENTION_FIELD) for spec in self.retention]

    def retention_due(self, rule: RetentionRule, now: datetime, keep: Keep) -> Due:
        due_segment, kept_segment = self._retention_segments(rule, now, keep)
        due = self._find_segment(due_segment)
        out = Due(due=len(due), kept_request=len(self._find_segment(kept_segment)) if kept_segment else 0)
        out.oldest = min((t for t in map(_visit_time, due) if t is not None), default=None)
        return out

    def retention_apply(self, rule: RetentionRule, now: datetime, keep: Keep, batch: int = 1000,
                        cursor: Any = None, checkpoint: Callable[[Any, Receipt], None] | None = None) -> Receipt:
        """Delete the visits past retention, at most min(batch, chunk_size) per deleteDataSubjects call, then
        checkpoint. A deleted visit is gone from Matomo, so each search starts where the last call ended: a
        resumed run finds only what is left and deletes nothing twice. The cursor counts the visits deleted.
        findDataSubjects answers at most 401 visits, so it is asked again until an answer is short; a visit it
        answers again after its delete means the delete did nothing (a PermanentError, not a loop)."""
        due_segment, kept_segment = self._retention_segments(rule, now, keep)
        receipt = Receipt(self.name, "retention")
        kept = len(self._find_segment(kept_segment)) if kept_segment else 0
        if kept:
            receipt.skipped[VISITS] = {KEPT_REQUEST: kept}
        deleted = int((cursor or {}).get("deleted", 0)) if isinstance(cursor, dict) else 0
        size = max(1, min(batch, self.chunk_size))
        tried: set[tuple[str, str]] = set()
        sites: set[str] = set()
        while True:
            rows = self._visit_rows(self._call("PrivacyManager.findDataSubjects", [
                ("idSite", self.id_sites), ("segment", due_segment), ("filter_limit", str(FIND_CAP))]))
            fresh = [v for v in rows if (str(v["idSite"]), str(v["idVisit"])) not in tried]
            if len(fresh) < len(rows):
                raise PermanentError.of(self.name, note(
                    NOTHING_CHANGED, call="PrivacyManager.deleteDataSubjects",
                    answer=f"{len(rows) - len(fresh)} visit(s) still found after their delete"))
            for chunk in _chunks(fresh, size):
                numbers = self._delete_visits(chunk)
                tried.update((str(v["idSite"]), str(v["idVisit"])) for v in chunk)
                sites.update(str(v["idSite"]) for v in chunk)
                for table, count in numbers.items():
                    receipt.changed[table] = receipt.changed.get(table, 0) + count
                deleted += len(chunk)
                if checkpoint is not None:
                    checkpoint({"deleted": deleted}, receipt)
            if len(rows) < FIND_CAP:
                break
        if receipt.changed.get("log_visit"):
            receipt.note(N_("{entity}: {count} erased"), entity=VISITS, count=receipt.changed["log_visit"])
            receipt.note(ARCHIVES_NOTE, sites=", ".join(sorted(sites, key=_site_order)))
        return receipt

    def _retention_segments(self, rule: RetentionRule, now: datetime, keep: Keep) -> tuple[str, str | None]:
        """(the visits due and not kept, the visits due and kept for an open request, or None: nobody kept).
        `!=` also matches a visit without a userId (SegmentExpression.php L256-258, L329-334), so an anonymous
        visit is due unless its visitor id is kept. `,` (OR) binds tighter than `;` (AND)."""
        period = self._retention_period(rule)
        age = segment_condition("visitEndServerDate", period.cutoff(today_utc(now)).isoformat(), "<")
        identities = keep.identities if keep.requests else None
        if identities is None or not self._conditions(identities):
            return age, None
        return (";".join([age, *self._conditions(identities, "!=")]),
                age + ";" + ",".join(self._conditions(identities)))

    def _retention_period(self, rule: RetentionRule) -> Period:
        spec = next((s for s in self.retention if s.entity == rule.entity and s.by == "dsar"), None)
        if spec is None or spec.period is None or rule.mechanism != MECHANISM_RUN:
            raise UnsupportedAction(self.name, f"no retention rule for {rule.entity}")
        return spec.period

    def _delete_visits(self, chunk: list[dict[str, Any]]) -> dict[str, int]:
        counts = self._call("PrivacyManager.deleteDataSubjects", _visits_params(chunk))
        if not isinstance(counts, dict):
            raise PermanentError(self.name, "PrivacyManager.deleteDataSubjects returned no per-table counts")
        try:
            return {str(table): int(count) for table, count in counts.items()}
        except (TypeError, ValueError):
            raise PermanentError(self.name, "PrivacyManager.deleteDataSubjects returned a non-numeric count") from None

    def check(self) -> Health:
        health = Health(self.name, ok=True)
        try:
            sites = self._admin_sites()
        except ConnectorError as exc:
            health.ok = False
            health.problems.append(exc.message)
            return health
        if any(spec.by == "dsar" for spec in self.retention):
            # the retention run's own search, for a day before any visit: proves the segment is accepted
            try:
                self._call("PrivacyManager.findDataSubjects", [
                    ("idSite", self.id_sites), ("segment", segment_condition("visitEndServerDate", "1998-01-01", "<")),
                    ("filter_limit", str(FIND_CAP))])
            except ConnectorError as exc:
                health.ok = False
                health.problems.append(f"retention: {exc.message}")
        if not sites:
            health.ok = False
            health.problems.append("the token has admin access to no site; the GDPR tools need admin access")
        elif self.id_sites != "all":
            missing = sorted(set(self.id_sites.split(",")) - set(sites), key=int)
            if missing:
                health.ok = False
                health.problems.append(f"the token lacks admin access to site(s) {', '.join(missing)}")
        return health

    def close(self) -> None:
        self.http.close()

    # -- Matomo calls -------------------------------------------------------------------------

    def _call(self, method: str, params: Sequence[tuple[str, str]]) -> Any:
        """POST one API method; token_auth goes only in the form body."""
        query = {"module": "API", "method": method, "format": "JSON"}
        body = [("token_auth", self._token), *params]
        try:
            payload = self.http.json("POST", "index.php", params=query, data=body, ok=(200,))
        except ConnectorError as exc:
            raise type(exc)(self.name, f"{method}: {exc.message}") from exc
        # Matomo answers most failures with HTTP 200 and this envelope.
        if isinstance(payload, dict) and payload.get("result") == "error":
            message = redact(str(payload.get("message") or "no message"))[:200]
            raise PermanentError(self.name, f"{method} failed: {message}")
        return payload

    def _admin_sites(self) -> list[str]:
        sites = self._call("SitesManager.getSitesIdWithAdminAccess", [])
        # core/Access.php L399-407: array_unique(array_merge(admin, superuser)) keeps the keys, so a user listed
        # as both answers a JSON object ({"0": 1, "2": 3}) rather than a list.
        if isinstance(sites, dict):
            sites = list(sites.values())
        if not isinstance(sites, list):
            raise PermanentError(self.name, "SitesManager.getSitesIdWithAdminAccess returned no list of site ids")
        try:
            return list(dict.fromkeys(str(int(site)) for site in sites))
        except (TypeError, ValueError):
            raise PermanentError(self.name, "SitesManager.getSitesIdWithAdminAccess returned a site id that is "
                                            "not a number") from None

    def _user_ids(self, identities: Identities) -> list[str]:
        values = list(identities.of(self.user_id_identity)) + identities.of(IdentityType.MATOMO_USER_ID)
        return sorted({v for v in values if v})

    def _conditions(self, identities: Identities, op: str = "==") -> list[str]:
        conditions: list[str] = []
        visitor_ids: set[str] = set()
        for user_id in self._user_ids(identities):
            conditions.append(segment_condition("userId", user_id, op))
            visitor_ids.add(user_id_hash(user_id))
        for raw in identities.of(IdentityType.MATOMO_VISITOR_ID):
            value = raw.strip().lower()
            if _VISITOR_ID.match(value):
                visitor_ids.add(value)
            else:
                log.warning("matomo.visitor_id_ignored", system=self.name, reason="not 16 hex characters")
        conditions.extend(segment_condition("visitorId", v, op) for v in sorted(visitor_ids))
        return conditions

    def _subject_visits(self, identities: Identities) -> tuple[list[dict[str, Any]], int]:
        """The subject's visits, and how many found visits carry another userId (left alone).

        A visit is the subject's when its userId is one of theirs, or when it has no userId and was found
        by one of their visitor ids. A visit with another userId was reached through a visitor id that two
        people share (one computer); it is someone else's whatever the visitor id says.
        """
        own = {_fold(u) for u in self._user_ids(identities)}
        mine: list[dict[str, Any]] = []
        others = 0
        for visit in self._find_visits(identities):
            user_id = str(visit.get("userId") or "")
            if user_id and _fold(user_id) not in own:
                others += 1
            else:
                mine.append(visit)
        return mine, others

    def _find_visits(self, identities: Identities) -> list[dict[str, Any]]:
        """Every visit matching any identity (OR segment), deduplicated, complete even past the cap."""
        conditions = self._conditions(identities)
        if not conditions:
            return []
        return self._find_segment(",".join(conditions))

    def _find_segment(self, segment: str) -> list[dict[str, Any]]:
        """Every visit of the segment, deduplicated: findDataSubjects, then Live page by page past its cap."""
        rows = self._call(
            "PrivacyManager.findDataSubjects",
            [("idSite", self.id_sites), ("segment", segment), ("filter_limit", str(self.filter_limit))],
        )
        if isinstance(rows, list) and len(rows) >= min(self.filter_limit, FIND_CAP):
            log.info("matomo.find_truncated", system=self.name, rows=len(rows))
            rows = list(self._page_visits(segment))
        return self._visit_rows(rows)

    def _visit_rows(self, rows: Any) -> list[dict[str, Any]]:
        if not isinstance(rows, list):
            raise PermanentError(self.name, "PrivacyManager.findDataSubjects returned no list of visits")
        visits: dict[tuple[str, str], dict[str, Any]] = {}
        for row in rows:
            if not isinstance(row, dict) or row.get("idSite") in (None, "") or row.get("idVisit") in (None, ""):
                raise PermanentError(self.name, "a visit without idSite/idVisit came back from Matomo")
            visits.setdefault((str(row["idSite"]), str(row["idVisit"])), row)
        return list(visits.values())

    def _page_visits(self, segment: str) -> Iterator[dict[str, Any]]:
        """Live.getLastVisitsDetails page by page, one site at a time (the narrowest query Live takes).

        Live orders newest first, so a visit arriving mid-way shifts rows to later pages: we may
        see a row twice (deduplicated by the caller) but never skip one.
        """
        sites = self._admin_sites() if self.id_sites == "all" else self.id_sites.split(",")
        for site in sites:

            def fetch(page: int, site: str = site) -> tuple[list[Any], bool]:
                rows = self._call(
                    "Live.getLastVisitsDetails",
                    [
                        ("idSite", site),
                        ("period", ALL_TIME[0]),
                        ("date", ALL_TIME[1]),
                        ("segment", segment),
                        ("filter_limit", str(self.page_size)),
                        ("filter_offset", str(page * self.page_size)),
                        ("doNotFetchActions", "1"),
                    ],
                )
                if not isinstance(rows, list):
                    raise PermanentError(self.name, "Live.getLastVisitsDetails returned no list of visits")
                return rows, len(rows) >= self.page_size

            yield from paginate(fetch, first_page=0)


# -- helpers ----------------------------------------------------------------------------------


def _fold(user_id: str) -> str:
    """A userId as compared with the subject's: Matomo's `==` runs in MySQL, which ignores case and
    trailing spaces under the default collation."""
    return user_id.strip().casefold()


def _visit_time(visit: Mapping[str, Any]) -> datetime | None:
    """`lastActionDateTime`, which Live formats in UTC (plugins/Live/VisitorDetails.php L198-201; core/bootstrap.php
    L46 sets PHP's zone to UTC)."""
    try:
        return datetime.strptime(str(visit.get("lastActionDateTime") or ""), "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC)
    except ValueError:
        return None


def _chunks(items: list[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _visits_params(visits: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """The visits[i][idsite] / visits[i][idvisit] form array the PrivacyManager methods take."""
    params: list[tuple[str, str]] = []
    for i, visit in enumerate(visits):
        params.append((f"visits[{i}][idsite]", str(visit["idSite"])))
        params.append((f"visits[{i}][idvisit]", str(visit["idVisit"])))
    return params


def _selected(table: str, wanted: set[str] | None) -> bool:
    if wanted is None or VISITS in wanted or table in wanted:
        return True
    return table.startswith(_LOG_ACTION_PREFIX) and "log_action" in wanted


def _record_id(table: str, row: Mapping[str, Any]) -> str:
    keys = ("idaction",) if table.startswith(_LOG_ACTION_PREFIX) else _ROW_KEYS.get(table)
    if keys and all(row.get(k) not in (None, "") for k in keys):
        return ":".join(str(row[k]) for k in keys)
    # Plugin tables we do not know: a stable id from the content, so repeats deduplicate.
    return hashlib.sha1(orjson.dumps(row, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]


def _site_order(site: str) -> tuple[int, str]:
    return (int(site), site) if site.isdigit() else (1 << 62, site)
