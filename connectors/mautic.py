"""Mautic REST API (4.x / 5.x) connector.

Facts from shared/vendor-apis.md section 2 and its "settled against the vendors' own source" section.
A person is one or more Mautic contacts (e-mail is not unique in Mautic), found by an exact
`where[...]` e-mail filter (or, for addresses Mautic's `where` cannot match, a strict `search`
checked client-side) or by contact id; every action covers all of them.

Setup: create the API credentials (Settings > API Credentials) **as an admin user** when using
`auth: oauth2`: Mautic grants the client_credentials flow only to credentials an admin created
(ApiBundle/Controller/ClientController.php L233-238); others get `unauthorized_client` from the
token call, which `dsar check` names. The API user needs to view and edit contacts.
"""

from __future__ import annotations

import html
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import UTC, datetime
from functools import partial
from typing import Any

import orjson
import requests
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
from connectors.emails import InvalidEmail, email_forms, normalise_email
from connectors.http import HttpClient, NotFound, RetryPolicy, in_parallel, paginate
from connectors.ratelimit import make_rate_limiter
from connectors.redact import redact, safe_url
from connectors.retention import RetentionRule, vendor_rule
from connectors.vendor_settings import MauticSettings, parse

log = structlog.get_logger(__name__)

ENTITIES: tuple[str, ...] = ("contact", "activity", "notes", "segments", "campaigns", "companies", "devices")
DNC_MANUAL = 3  # Mautic DoNotContact::MANUAL
DNC_UNSUBSCRIBED = 1  # Mautic DoNotContact::UNSUBSCRIBED (the unsubscribe link sets it)
DNC_BOUNCED = 2  # Mautic DoNotContact::BOUNCED
DNC_REASONS = {DNC_UNSUBSCRIBED: "unsubscribed", DNC_BOUNCED: "bounced", DNC_MANUAL: "manual"}
# Characters Mautic HTML-encodes in `where` values before the SQL `=` (InputHelper::cleanArray ->
# FILTER_SANITIZE_SPECIAL_CHARS, FetchCommonApiController.php L256), while stored e-mails keep them
# (InputHelper::email): an address holding one is searched with `search=email:+...` instead.
WHERE_MANGLED = frozenset("'\"&<>")
NEWSLETTER_CHANNEL = "email"
# Why a company is left alone on erasure: it is an organisation other contacts may share, not the person.
COMPANY_LEFT = N_("company left alone: an organisation other contacts may share (only the contact's link goes)")
ALREADY_GONE = N_("contact {id} was already gone (HTTP 404)")
# A write whose reply says it changed nothing: the task fails (issue 10 point 9), quoting the reply.
NOTHING_CHANGED = N_("{call} answered that it changed nothing ({answer}); the task is not done")
# How a Mautic connector states where it learned an identifier. A contact id is an instance's own row id: one
# that another Mautic instance (a second system of this kind) learned names someone else here, so it is skipped.
LEARNED_VIA = N_("{system}: contact {id} ({how}), field {field}")
TOKEN_PATH = "oauth/v2/token"
TOKEN_MARGIN_S = 60.0  # renew a little before expiry so a token never dies mid-request
DEFAULT_TOKEN_LIFETIME_S = 3600.0  # Mautic's default api_oauth2_access_token_lifetime (60 min)
# After a token call failed (with its retries), threads that queued behind it get the same error at once for this
# long instead of each retrying again: a Mautic answering 500 held every worker thread for minutes (fault campaign).
TOKEN_FAILURE_HOLD_S = 30.0

# Rows Mautic keeps with lead_id set to NULL when a contact is deleted (ON DELETE SET NULL), and
# form results for which the API has no delete call (vendor-apis.md 2.4).
RESIDUE_STEP = N_(
    "Mautic keeps rows about the deleted contact(s) {ids} with lead_id set to NULL, which the API cannot "
    "remove: e-mail send stats (table email_stats, column email_address still holds the address), page hits "
    "(table page_hits, with IP addresses) and form submissions (table form_submissions plus the per-form "
    "results tables form_results_*). Delete or anonymise them in the Mautic database, or delete the form "
    "results in the UI (Forms > Results), e.g. matching email_stats.email_address and the form e-mail field."
)


class MauticConnector(Connector):
    """Mautic contacts: locate, export, erase (hard delete), restrict/lift (do-not-contact).

    Settings: `MauticSettings` in connectors.vendor_settings (tables in docs/datamap.md). The request
    id is appended to `dnc_comment` when given as `request_id` to from_settings or found as
    `ctx.request_id`, which ConnectorContext does not have yet.

    Behaviours resting on [U] or inferred facts:
    - 429 carries no Retry-After; the wait comes from X-RateLimit-Reset (HttpClient); a wait
      longer than RetryPolicy.max_retry_after becomes a TransientError.
    - No documented upper bound on `limit`: paging advances by the items actually returned
      and by the vendor's `maxPages`/`total`, so a server-side cap only costs extra calls;
      `activity_page_size` / `page_size` tune it.
    - The delete response's `contact.id` is expected to be null, so the id is never compared; a
      200 must still carry the deleted `contact` [V: CommonApiController::deleteEntityAction], and
      one without it (or with `errors`) fails the task. A 404 means the contact is already gone.
    - Every write must say it acted (issue 10 point 9) [V, vendor-apis.md 2.5]: `dnc/{channel}/add`
      answers the contact with `doNotContact` holding the entry on that channel, `dnc/{channel}/remove`
      answers `recordFound: true`; a reply that says otherwise fails the task with its words.
    - Contacts in a search result whose stored e-mail differs from the searched one (a
      server ignoring `where`) are dropped; ones without an e-mail in the payload are kept,
      trusting the server's exact filter.
    - An address with `'`, `"`, `&`, `<` or `>` is never found by `where` (the value is
      HTML-entity-encoded before the SQL `=`, the stored e-mail is not) [V from code]: it is
      searched with `search=email:+<address>` (a LIKE without the trailing `%`, so `_` and `%`
      still match any character) and only contacts whose stored e-mail equals it, ignoring case
      and surrounding spaces, are kept.
    - Do-not-contact: Mautic's `dnc/{channel}/remove` removes the first entry on the channel
      whatever its reason (LeadBundle/Model/DoNotContact.php L28-51), and `dnc/{channel}/add`
      with reason 3 replaces a bounce (reason 2) but not an unsubscribe (L92-110). So restrict
      adds ours only where the channel has no entry yet, and lift removes only our own entries
      (reason 3, comment starting with `dnc_comment`); a channel holding the person's own
      unsubscribe or a bounce (or someone else's manual entry) is never touched, and the receipt
      says so. Both read the contact's `doNotContact` entries (in every contact payload).

    Marketing retention (`unsubscribed_contacts`, `expired_trials`, `is_unsubscribed`, `trial_ended`):
    - Unsubscribes are read from the raw stats table `dnc_table` ("lead_donotcontact" [V]), rows
      with reason 1 (UNSUBSCRIBED [V]) on the e-mail channel, filtered with `where ... eq` on the
      columns `reason` and `channel` [V]; the rows come under `stats` [V: StatsApiController.php
      L27, L48-49], and a failure comes as HTTP 200 with `errors` [V: L51-58] or, for a table
      Mautic does not know, with `availableTables` instead of rows: both fail the sweep loudly.
      Each contact's e-mail then comes from GET /api/contacts/{id}.
    - The trial end is the custom field `trial_field` (no default: no trial sweep), listed with
      `where[0][expr]=lt` and the time as 'Y-m-d H:i:s' in UTC [U: how the instance stores the
      field]; values are re-read client-side (ISO 8601 or 'Y-m-d H:i:s'; no zone = UTC) and a
      contact whose value is not before now is dropped.
    - When an action falls due, `is_unsubscribed` / `trial_ended` look again: every contact with
      the e-mail must still be unsubscribed (the contact's `doNotContact` entries) / past its trial.
    - `newsletter_erasure_delay_days`, `trial_erasure_delay_days` (0): how long after the sweep
      the erasure is due.
    """

    entities = ENTITIES

    def __init__(
        self,
        name: str,
        config: MauticSettings,
        ctx: ConnectorContext,
        *,
        basic: tuple[str, str] | None = None,
        client: tuple[str, str] | None = None,
        retry: RetryPolicy | None = None,
        request_id: str | None = None,
        clock: Callable[[], float] = time.monotonic,
        session: requests.Session | None = None,
    ) -> None:
        self.name = name
        self.config = config
        self._client_credentials = client
        self._clock = clock
        self._request_id = request_id or getattr(ctx, "request_id", None)
        self._token: str | None = None
        self._token_expires = 0.0
        self._token_lock = threading.Lock()
        self._token_failure: tuple[ConnectorError, float] | None = None  # the last failed token call, until when
        self.http = HttpClient(
            name,
            config.base_url,
            auth=basic if config.auth == "basic" else None,
            timeout=(min(5.0, config.timeout_s), config.timeout_s),
            retry=retry,
            rate_limiter=make_rate_limiter(f"mautic:{name}", config.rate_per_second, ctx.redis_url, ctx.namespace),
            session=session,
        )

    @classmethod
    def from_settings(
        cls,
        name: str,
        settings: Mapping[str, Any],
        ctx: ConnectorContext,
        *,
        retry: RetryPolicy | None = None,
        request_id: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> MauticConnector:
        config = parse(MauticSettings, name, settings)
        basic = client = None
        if config.auth == "basic":
            basic = (
                ctx.secret(name, "user_env", config.user_env),
                ctx.secret(name, "password_env", config.password_env),
            )
        else:
            client = (
                ctx.secret(name, "client_id_env", config.client_id_env),
                ctx.secret(name, "client_secret_env", config.client_secret_env),
            )
        return cls(name, config, ctx, basic=basic, client=client, retry=retry, request_id=request_id, clock=clock)

    # -- contract -------------------------------------------------------------------------

    def accepts(self) -> set[IdentityType]:
        return {IdentityType.EMAIL, IdentityType.MAUTIC_CONTACT_ID}

    def policies(self) -> dict[str, EntityPolicy]:
        with_contact = Note(N_("deleted with the contact (DELETE /api/contacts/{{id}}/delete)"))
        return {
            "contact": EntityPolicy.of(Note(N_("delete the contact (DELETE /api/contacts/{{id}}/delete)")),
                                       note(N_("do-not-contact on {channels}"),
                                            channels=", ".join(self.config.dnc_channels))),
            "activity": EntityPolicy.of(Note(N_("deleted with the contact (DELETE /api/contacts/{{id}}/delete); "
                                                "e-mail stats, page hits, form results stay (manual)")), None),
            "notes": EntityPolicy.of(with_contact, None, provided_by_subject=False),
            "segments": EntityPolicy.of(with_contact, None, provided_by_subject=False),
            "campaigns": EntityPolicy.of(with_contact, None, provided_by_subject=False),
            "companies": EntityPolicy.of(Note(N_("the contact's link to a company goes with the contact; the company "
                                                 "itself (shared with other contacts) is left alone")),
                                         None, provided_by_subject=False),
            "devices": EntityPolicy.of(with_contact, None),
        }

    def locate(self, identities: Identities) -> Hits:
        how: dict[int, str] = {}
        contacts = self._contacts(identities, how)
        learned: list[Identity] = []
        touches: set[Identity] = set()
        for contact_id, contact in contacts.items():
            # Only the contact's own fields: never its companies, owner (a Mautic user) or anyone sharing them.
            def learn(type_: IdentityType, value: str, field: str, contact_id: int = contact_id) -> None:
                identity = Identity.learned(type_, value, self.name, note(
                    LEARNED_VIA, system=self.name, id=str(contact_id),
                    how=Note(how.get(contact_id, N_("matched"))), field=field))
                learned.append(identity)
                touches.add(identity)

            learn(IdentityType.MAUTIC_CONTACT_ID, str(contact_id), "id")
            values = _field_values(contact)
            email = values.get("email")
            if isinstance(email, str) and email.strip():
                try:
                    learn(IdentityType.EMAIL, normalise_email(email), "email")
                except InvalidEmail:
                    log.warning("mautic.unusable_email", system=self.name, contact_id=str(contact_id))
            for key in ("phone", "mobile"):
                phone = _normalise_phone(values.get(key))
                if phone:
                    learn(IdentityType.PHONE, phone, key)
        new = [i for i in dict.fromkeys(learned) if i not in identities]
        hits = Hits(system=self.name, found=bool(contacts), counts={"contact": len(contacts)} if contacts else {},
                    learned=new)
        if touches:
            hits.touches["contact"] = touches  # erasure deletes the contact, restriction flags it
        return hits

    def export(self, identities: Identities, entities: Iterable[str] | None = None) -> Iterator[Record]:
        wanted = self._entities(entities)
        # Every sub-resource of every contact is its own call: fetch them at once (vendor latency adds up
        # otherwise), yielding in a fixed order. The shared rate limiter still paces them.
        jobs: list[Callable[[], Iterable[Record]]] = []
        for contact_id, contact in self._contacts(identities).items():
            if "contact" in wanted:
                jobs.append(partial(lambda cid, body: [Record("contact", str(cid), body)], contact_id, contact))
            if "activity" in wanted:
                jobs.append(partial(self._activity, contact_id))
            if "notes" in wanted:
                jobs.append(partial(self._offset_list, contact_id, "notes", "notes"))
            if "segments" in wanted:
                jobs.append(partial(self._segments, contact_id))
            for entity in ("campaigns", "companies"):
                if entity in wanted:
                    jobs.append(partial(self._keyed_list, contact_id, entity))
            if "devices" in wanted:
                jobs.append(partial(self._offset_list, contact_id, "devices", "devices"))
        yield from in_parallel(jobs, max_workers=self.config.parallel_calls)

    def _segments(self, contact_id: int) -> Iterator[Record]:
        body = self._get(f"api/contacts/{contact_id}/segments")
        # The code answers with root key `lists`; the docs sample shows `segments`.
        items = body["lists"] if "lists" in body else body.get("segments")
        yield from self._records("segments", contact_id, _collection(items))

    def _keyed_list(self, contact_id: int, entity: str) -> Iterator[Record]:
        body = self._get(f"api/contacts/{contact_id}/{entity}")
        yield from self._records(entity, contact_id, _collection(body.get(entity)))

    def erase(self, identities: Identities, entities: Iterable[str] | None = None) -> Receipt:
        wanted = self._entities(entities)
        if "contact" not in wanted:
            raise UnsupportedAction.of(self.name, Note(N_("Mautic erases whole contacts (everything linked goes with "
                                                          "them); include entity 'contact'")))
        receipt = Receipt(system=self.name, action="erase")
        deleted: list[int] = []
        companies = 0
        for contact_id in self._contacts(identities):
            # A company is an organisation other contacts may share: deleting the contact removes only its
            # link (companies_leads); the company is never deleted or edited. Counted for the receipt.
            try:
                companies += len(_collection(self._get(f"api/contacts/{contact_id}/companies").get("companies")))
            except NotFound:
                receipt.note(ALREADY_GONE, id=str(contact_id))
                continue
            path = f"api/contacts/{contact_id}/delete"
            try:
                answer = self._get_json("DELETE", path)
            except NotFound:
                receipt.note(ALREADY_GONE, id=str(contact_id))
                continue
            if answer.get("errors") or not isinstance(answer.get("contact"), dict):
                self._nothing_changed("DELETE", path, _answer_words(answer, "no contact in the reply"))
            deleted.append(contact_id)
            receipt.vendor_refs.append(f"mautic contact {contact_id} deleted")
        if deleted:
            receipt.changed["contact"] = len(deleted)
            receipt.note(N_("deleted {count} contact(s) with their notes, segment and campaign memberships, company "
                            "links, devices, do-not-contact entries and timeline"), count=len(deleted))
            receipt.manual(RESIDUE_STEP, ids=", ".join(map(str, deleted)))
        else:
            receipt.note(N_("no Mautic contact matched; nothing deleted"))
        if companies:
            receipt.skipped["companies"] = {COMPANY_LEFT: companies}
            receipt.note(N_("{count} company link(s) went with the contact(s); the companies themselves were left "
                            "alone"), count=companies)
        return receipt

    def restrict(self, identities: Identities, entities: Iterable[str] | None = None) -> Receipt:
        self._entities(entities)
        receipt = Receipt(system=self.name, action="restrict")
        body = {"reason": DNC_MANUAL, "comments": self._dnc_comment()}
        count = 0
        contacts = self._contacts(identities)
        for contact_id, contact in contacts.items():
            entries = self._dnc_of(contact_id, contact)
            added = False
            for channel in self.config.dnc_channels:
                theirs = [e for e in _on_channel(entries, channel) if not self._ours(e)]
                if theirs:
                    # Adding reason 3 would replace a bounce (DoNotContact.php L92-110) and a later lift
                    # would then delete it; the person is not contactable on this channel anyway.
                    receipt.note(N_("contact {id} already has do-not-contact on {channel} ({reasons}): left as it is, "
                                    "and lifting the restriction will not remove it"), id=str(contact_id),
                                 channel=channel, reasons=_reasons(theirs))
                    continue
                path = f"api/contacts/{contact_id}/dnc/{channel}/add"
                answer = self._get_json("POST", path, json=body)
                # The reply is the contact with doNotContact now populated (LeadApiController::addDncAction).
                after = _as_dict(answer.get("contact")).get("doNotContact")
                if answer.get("errors") or not _on_channel([e for e in _collection(after) if isinstance(e, dict)],
                                                           channel):
                    self._nothing_changed("POST", path, _answer_words(
                        answer, f"the contact in the reply has no do-not-contact entry on {channel}"))
                receipt.vendor_refs.append(f"mautic contact {contact_id} do-not-contact {channel} added")
                added = True
            count += added
        if count:
            receipt.changed["contact"] = count
            channels = ", ".join(self.config.dnc_channels)
            receipt.note(N_("do-not-contact ({channels}, reason manual) set on {count} contact(s); tracking and "
                            "segment/campaign membership are unchanged"), channels=channels, count=count)
        elif not contacts:
            receipt.note(N_("no Mautic contact matched; nothing restricted"))
        return receipt

    def lift_restriction(self, identities: Identities, entities: Iterable[str] | None = None) -> Receipt:
        """Remove only our own do-not-contact entries (reason manual, our comment).

        Mautic's remove call deletes the first entry on the channel whatever its reason, so it is
        never called on a channel holding the person's own unsubscribe, a bounce or someone else's
        manual entry: those stay, and the receipt says so.
        """
        self._entities(entities)
        receipt = Receipt(system=self.name, action="lift_restriction")
        count = 0
        contacts = self._contacts(identities)
        for contact_id, contact in contacts.items():
            entries = self._dnc_of(contact_id, contact)
            removed = False
            for channel in self.config.dnc_channels:
                on_channel = _on_channel(entries, channel)
                theirs = [e for e in on_channel if not self._ours(e)]
                if theirs:
                    if len(theirs) < len(on_channel):
                        receipt.note(N_("contact {id}: kept the do-not-contact on {channel} ({reasons}); it is not "
                                        "ours to lift, so ours there stays too"), id=str(contact_id), channel=channel,
                                     reasons=_reasons(theirs))
                    else:
                        receipt.note(N_("contact {id}: kept the do-not-contact on {channel} ({reasons}); it is not "
                                        "ours to lift"), id=str(contact_id), channel=channel, reasons=_reasons(theirs))
                    continue
                if not on_channel:
                    continue  # nothing of ours to lift
                path = f"api/contacts/{contact_id}/dnc/{channel}/remove"
                body = self._get_json("POST", path)
                if body.get("recordFound") is not True:
                    # Our entry was there when read: a reply saying none was found removed nothing.
                    self._nothing_changed("POST", path, _answer_words(body, "no recordFound in the reply"))
                removed = True
                receipt.vendor_refs.append(f"mautic contact {contact_id} do-not-contact {channel} removed")
            count += removed
        if count:
            receipt.changed["contact"] = count
        receipt.note(N_("do-not-contact removed from {count} of {total} matched contact(s)"), count=count,
                     total=len(contacts))
        return receipt

    def _nothing_changed(self, method: str, path: str, answer: str) -> None:
        raise PermanentError.of(self.name, note(NOTHING_CHANGED, call=f"{method} {path}", answer=answer))

    def _dnc_of(self, contact_id: int, contact: Mapping[str, Any]) -> list[dict[str, Any]]:
        """The contact's do-not-contact entries, from its payload (every contact view carries them)."""
        entries = contact.get("doNotContact")
        if entries is None:  # not in this payload: read the contact itself
            try:
                entries = _as_dict(self._get(f"api/contacts/{contact_id}").get("contact")).get("doNotContact")
            except NotFound:
                return []
            if entries is None:
                raise PermanentError(self.name, f"GET {safe_url(self.http.url(f'api/contacts/{contact_id}'))} "
                                                "answered without doNotContact: cannot tell our do-not-contact "
                                                "entries from the person's own")
        return [e for e in _collection(entries) if isinstance(e, dict)]

    def _ours(self, entry: Mapping[str, Any]) -> bool:
        """Our restriction: reason manual and a comment starting with `dnc_comment` (Mautic stores comments
        HTML-escaped, InputHelper::clean)."""
        if _int(entry.get("reason"), default=None) != DNC_MANUAL:
            return False
        comment = html.unescape(str(entry.get("comments") or "")).strip()
        mark = self.config.dnc_comment
        return comment == mark or comment.startswith(mark + " ")

    # -- marketing retention --------------------------------------------------------------

    def unsubscribed_contacts(self) -> list[str]:
        """E-mails of contacts with do-not-contact on the e-mail channel for reason UNSUBSCRIBED."""
        lead_ids: set[int] = set()
        start, table = 0, self.config.dnc_table
        while True:
            params = {"where[0][col]": "reason", "where[0][expr]": "eq", "where[0][val]": str(DNC_UNSUBSCRIBED),
                      "where[1][col]": "channel", "where[1][expr]": "eq", "where[1][val]": NEWSLETTER_CHANNEL,
                      "start": str(start), "limit": str(self.config.page_size)}
            body = self._get(f"api/stats/{table}", params=params)
            rows = self._stats_rows(body, table)
            for row in rows:
                lead_id = _int(_as_dict(row).get("lead_id"), default=None)
                if lead_id is not None:
                    lead_ids.add(lead_id)
            start += len(rows)
            if not rows or start >= _int(body.get("total"), default=0):
                break
        jobs = [partial(self._contact_email, lead_id) for lead_id in sorted(lead_ids)]
        return sorted(set(in_parallel(jobs, max_workers=self.config.parallel_calls)))

    def _stats_rows(self, body: Mapping[str, Any], table: str) -> list[Any]:
        """Rows of a GET /api/stats/{table} answer: under `stats` (StatsApiController.php L27, L48-49).

        Mautic answers a failure with HTTP 200 and `errors` (L51-58), and a table it does not serve with
        `availableTables` and no rows (L43-45): both stop the sweep rather than read as "nobody".
        """
        where = f"GET {safe_url(self.http.url(f'api/stats/{table}'))}"
        errors = body.get("errors")
        if errors:
            first = (_collection(errors) or [errors])[0]
            text = first.get("message") if isinstance(first, dict) else first
            raise PermanentError(self.name, f"{where} failed: {redact(str(text or 'no message'))[:200]}")
        if "stats" in body:
            return _collection(body["stats"])
        if table in body:  # the table-named key some older notes describe
            return _collection(body[table])
        if "availableTables" in body:
            tables = ", ".join(str(t) for t in _collection(body.get("availableTables"))[:20])
            raise PermanentError(self.name, f"{where}: Mautic serves no stats table {table!r} "
                                            f"(dnc_table); it offers: {tables or 'none'}")
        raise PermanentError(self.name, f"{where} answered without rows (no 'stats' key)")

    def expired_trials(self, now: datetime) -> list[str]:
        """E-mails of contacts whose `trial_field` lies before `now`; [] when no trial field is configured."""
        field = self.config.trial_field
        if field is None:
            return []
        emails: set[str] = set()
        start = 0
        while True:
            params = {"where[0][col]": field, "where[0][expr]": "lt", "where[0][val]": _mautic_time(now),
                      "start": str(start), "limit": str(self.config.page_size)}
            body = self._get("api/contacts", params=params)
            items = _collection(body.get("contacts"))
            for contact in items:
                values = _field_values(_as_dict(contact))
                ends = _parse_time(values.get(field))
                if ends is None or ends >= now:
                    log.warning("mautic.trial_filter_mismatch_dropped", system=self.name, contact_id=_int_id(contact))
                    continue
                emails.update(_usable_email(values.get("email")))
            start += len(items)
            if not items or start >= _int(body.get("total"), default=0):
                return sorted(emails)

    def is_unsubscribed(self, email: str) -> bool:
        """Whether the person has contacts and every one is unsubscribed from e-mail."""
        contacts = self._contacts(Identities([Identity(IdentityType.EMAIL, email)]))
        return bool(contacts) and all(
            any(_as_dict(d).get("channel") == NEWSLETTER_CHANNEL
                and _int(_as_dict(d).get("reason"), default=None) == DNC_UNSUBSCRIBED
                for d in _collection(c.get("doNotContact"))) for c in contacts.values())

    def trial_ended(self, email: str, now: datetime) -> bool:
        """Whether the person has contacts and every one has a trial end before `now`."""
        field = self.config.trial_field
        contacts = self._contacts(Identities([Identity(IdentityType.EMAIL, email)]))
        if field is None or not contacts:
            return False
        ends = [_parse_time(_field_values(c).get(field)) for c in contacts.values()]
        return all(end is not None and end < now for end in ends)

    def _contact_email(self, contact_id: int) -> list[str]:
        try:
            body = self._get(f"api/contacts/{contact_id}")
        except NotFound:  # deleted since the DNC row was read
            return []
        return _usable_email(_field_values(_as_dict(body.get("contact"))).get("email"))

    def custom_fields(self) -> list[dict[str, Any]]:
        """The contact fields this Mautic holds (core and custom), for `dsar datamap scan`; read-only, no values.

        `GET /api/fields/contact` answers `{"total": N, "fields": [{alias, label, type, group, ...}]}` [V: Mautic
        developer documentation, rest_api/fields.rst "List contact fields"]; paged with start/limit.
        """
        out: list[dict[str, Any]] = []
        start = 0
        while True:
            body = self._get("api/fields/contact", {"start": str(start), "limit": str(self.config.page_size)})
            fields = _collection(body.get("fields"))
            for f in fields:
                if isinstance(f, dict) and f.get("alias"):
                    out.append({"name": str(f["alias"]), "label": str(f.get("label") or ""),
                                "type": str(f.get("type") or ""), "group": str(f.get("group") or "")})
            start += len(fields)
            if not fields or start >= _int(body.get("total"), default=0):
                return out

    # -- retention (docs/retention.md) -------------------------------------------------------------------
    # The newsletter and trial promises are the marketing sweep's (discovery.schedule.retention lists them while
    # this connector states none of that mechanism). A map rule for contacts is `by: vendor_setting` (e.g. the
    # mautic:maintenance:cleanup cron's --days-old) or `by: request`; `where[]` with `lt` on a date column is
    # settled (vendor-source-check.md M14), but no rule in the map asks dsar to delete contacts by age.

    def retention_rules(self) -> list[RetentionRule]:
        return [vendor_rule(self.name, spec) for spec in self.config.retention_rules]

    def check(self) -> Health:
        health = Health(system=self.name, ok=False)
        try:
            resp = self._request("GET", "api/contacts", params={"limit": "1"}, ok=(200, 401, 403))
        except ConnectorError as exc:
            health.problems.append(exc.message)
            return health
        if resp.status_code == 200:
            health.ok = True
            if "Mautic-Version" not in resp.headers:
                health.warnings.append("no Mautic-Version header in the answer: is base_url the Mautic site?")
            return health
        health.problems.append(self._auth_problem(resp))
        return health

    def close(self) -> None:
        self.http.close()

    # -- contacts -------------------------------------------------------------------------

    def _contacts(self, identities: Identities, how: dict[int, str] | None = None) -> dict[int, dict[str, Any]]:
        """Every contact of the person, by id: exact e-mail matches and the given contact ids.

        `how`, when given, receives how each contact was reached ("matched by e-mail", "matched by contact id").
        """
        found: dict[int, dict[str, Any]] = {}
        reached: dict[int, str] = {}
        for email in identities.of(IdentityType.EMAIL):
            for form in email_forms(email):
                for contact_id, contact in self._search_email(form).items():
                    found[contact_id] = contact
                    reached.setdefault(contact_id, N_("matched by e-mail"))
        for raw_id in self._own_contact_ids(identities):
            if not raw_id.strip().isdigit():
                continue  # a Mautic contact id is an integer; anything else cannot match
            contact_id = int(raw_id)
            if contact_id in found:
                continue
            try:
                body = self._get(f"api/contacts/{contact_id}")
            except NotFound:
                continue
            by_id = body.get("contact")
            if isinstance(by_id, dict):
                found[contact_id] = by_id
                reached[contact_id] = N_("matched by contact id")
        if how is not None:
            how.update(reached)
        return dict(sorted(found.items()))

    def _own_contact_ids(self, identities: Identities) -> list[str]:
        """Contact ids that may be this instance's: given in the request, learned here, or learned from a system
        that is not a Mautic (an account table's column); never one another Mautic instance learned."""
        return sorted({i.value for i in identities if i.type == IdentityType.MAUTIC_CONTACT_ID
                       and not (i.source != self.name and i.via_note is not None and i.via_note.msgid == LEARNED_VIA)})

    def _search_email(self, email: str) -> dict[int, dict[str, Any]]:
        # `where ... eq` is an exact match; `search=email:` would be a prefix match (the decoy).
        # Mautic HTML-encodes `where` values, so an address with one of WHERE_MANGLED never matches
        # there: it goes through the strict search command (`+`: no trailing %) and an exact check here.
        by_command = bool(WHERE_MANGLED & set(email))
        found: dict[int, dict[str, Any]] = {}
        start = 0
        while True:
            params: dict[str, str] = (
                {"search": f"email:+{email}"} if by_command
                else {"where[0][col]": "email", "where[0][expr]": "eq", "where[0][val]": email})
            params.update({"start": str(start), "limit": str(self.config.page_size)})
            body = self._get("api/contacts", params=params)
            items = _collection(body.get("contacts"))
            for contact in items:
                contact_id = _int_id(contact)
                if contact_id is None:
                    continue
                stored = _field_values(contact).get("email")
                # The search command is a LIKE (`_`, `%` match any character): keep only exact matches.
                if (isinstance(stored, str) or by_command) and str(stored or "").strip().lower() != email:
                    log.warning("mautic.search_mismatch_dropped", system=self.name, contact_id=str(contact_id))
                    continue
                found[contact_id] = contact
            start += len(items)
            if not items or start >= _int(body.get("total"), default=0):
                return found

    # -- export helpers -------------------------------------------------------------------

    def _activity(self, contact_id: int) -> Iterator[Record]:
        size = self.config.activity_page_size

        def fetch(page: int) -> tuple[list[Any], bool]:
            params = {"page": str(page), "limit": str(size), "order[0]": "timestamp", "order[1]": "ASC"}
            body = self._get(f"api/contacts/{contact_id}/activity", params=params)
            events = _collection(body.get("events"))
            max_pages = _int(body.get("maxPages"), default=None)
            if max_pages is not None:
                return events, page < max_pages
            return events, page * size < _int(body.get("total"), default=0)

        for seen, event in enumerate(paginate(fetch), start=1):
            event_id = event.get("eventId") if isinstance(event, dict) else None
            record_id = f"{contact_id}:{event_id}" if event_id else f"{contact_id}:#{seen}"
            yield Record("activity", record_id, {"contact_id": contact_id, **_as_dict(event)})

    def _offset_list(self, contact_id: int, path: str, key: str) -> Iterator[Record]:
        start = 0
        while True:
            params = {"start": str(start), "limit": str(self.config.page_size)}
            body = self._get(f"api/contacts/{contact_id}/{path}", params=params)
            items = _collection(body.get(key))
            yield from self._records(key, contact_id, items, offset=start)
            start += len(items)
            if not items or start >= _int(body.get("total"), default=0):
                return

    def _records(self, entity: str, contact_id: int, items: list[Any], offset: int = 0) -> Iterator[Record]:
        for n, item in enumerate(items, start=offset + 1):
            fields = _as_dict(item)
            item_id = fields.get("id") or fields.get("company_id") or f"#{n}"
            yield Record(entity, f"{contact_id}:{item_id}", {"contact_id": contact_id, **fields})

    def _entities(self, entities: Iterable[str] | None) -> set[str]:
        if entities is None:
            return set(ENTITIES)
        wanted = set(entities)
        unknown = wanted - set(ENTITIES)
        if unknown:
            raise PermanentError(self.name, f"unknown entities {sorted(unknown)}; Mautic has {list(ENTITIES)}")
        return wanted

    def _dnc_comment(self) -> str:
        if self._request_id:
            return f"{self.config.dnc_comment} {redact(str(self._request_id))}"[:255]
        return self.config.dnc_comment

    # -- HTTP and auth --------------------------------------------------------------------

    def _get(self, path: str, params: Mapping[str, str] | None = None) -> dict[str, Any]:
        return self._get_json("GET", path, params=params)

    def _get_json(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        resp = self._request(method, path, **kwargs)
        try:
            body = orjson.loads(resp.content) if resp.content else {}
        except orjson.JSONDecodeError:
            raise PermanentError(self.name, f"{method} {safe_url(self.http.url(path))} returned a body "
                                            "that is not JSON") from None
        if not isinstance(body, dict):
            raise PermanentError(self.name, f"{method} {safe_url(self.http.url(path))} returned JSON that "
                                            "is not an object")
        return body

    def _request(self, method: str, path: str, *, params: Mapping[str, str] | None = None, json: Any = None,
                 ok: tuple[int, ...] = (200,)) -> requests.Response:
        if self.config.auth == "basic":
            return self.http.request(method, path, params=params, json=json, ok=ok)
        token = self._access_token()
        resp = self.http.request(method, path, params=params, json=json, headers=_bearer(token), ok=(*ok, 401))
        if resp.status_code != 401:
            return resp
        # An expired or revoked token: fetch a new one once, then let a second 401 count.
        self._drop_token(token)
        return self.http.request(method, path, params=params, json=json, headers=_bearer(self._access_token()),
                                 ok=ok)

    def _access_token(self) -> str:
        with self._token_lock:
            if self._token and self._clock() < self._token_expires - TOKEN_MARGIN_S:
                return self._token
            failed = self._token_failure
            if failed is not None and self._clock() < failed[1]:
                raise failed[0]
            try:
                return self._fetch_token()
            except ConnectorError as exc:
                self._token_failure = (exc, self._clock() + TOKEN_FAILURE_HOLD_S)
                raise

    def _fetch_token(self) -> str:
        """POST the client credentials (the caller holds the token lock)."""
        assert self._client_credentials is not None
        client_id, client_secret = self._client_credentials
        data = {"client_id": client_id, "client_secret": client_secret, "grant_type": "client_credentials"}
        resp = self.http.request("POST", TOKEN_PATH, data=data, ok=(200, 400))
        if resp.status_code != 200:
            raise PermanentError(self.name, self._token_problem(resp))
        try:
            body = orjson.loads(resp.content)
        except orjson.JSONDecodeError:
            body = None
        token = body.get("access_token") if isinstance(body, dict) else None
        if not isinstance(token, str) or not token:
            raise PermanentError(self.name, f"POST {safe_url(self.http.url(TOKEN_PATH))} answered without "
                                            "an access_token")
        lifetime = _int(body.get("expires_in"), default=None) if isinstance(body, dict) else None
        self._token, self._token_failure = token, None
        self._token_expires = self._clock() + float(lifetime or DEFAULT_TOKEN_LIFETIME_S)
        return token

    def _token_problem(self, resp: requests.Response) -> str:
        error_type, message = _error_info(resp)
        where = f"POST {safe_url(self.http.url(TOKEN_PATH))} answered HTTP {resp.status_code}"
        if error_type == "unauthorized_client":
            # ApiBundle/Controller/ClientController.php L233-238: only credentials an admin creates get the grant.
            return (f"{where} (unauthorized_client{message}): Mautic does not grant client_credentials to these "
                    "API credentials; it does so only for credentials created by an admin user. Have an admin "
                    "create the OAuth2 API credentials (Settings > API Credentials) and use those")
        return f"{where} ({error_type or 'error'}{message})"

    def _drop_token(self, token: str) -> None:
        with self._token_lock:
            if self._token == token:
                self._token = None

    def _auth_problem(self, resp: requests.Response) -> str:
        error_type, message = _error_info(resp)
        where = f"GET {safe_url(self.http.url('api/contacts'))}"
        if resp.status_code == 403 and error_type == "api_disabled":
            return f"{where}: the Mautic API is disabled (Configuration > API Settings > API enabled) (HTTP 403)"
        if resp.status_code == 403 and self.config.auth == "basic" and error_type == "access_denied":
            return (f"{where}: HTTP basic auth is disabled in Mautic (Configuration > API Settings > "
                    "Enable HTTP basic auth) (HTTP 403)")
        if resp.status_code == 403:
            return f"{where}: the API user may not view contacts (HTTP 403{message})"
        if self.config.auth == "basic":
            return f"{where}: Mautic rejected the API user name or password (HTTP 401{message})"
        return f"{where}: Mautic rejected a freshly issued OAuth2 access token (HTTP 401{message})"


# -- helpers ----------------------------------------------------------------------------------


def _mautic_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def _parse_time(value: Any) -> datetime | None:
    """A Mautic date/datetime field value ('Y-m-d H:i:s', 'Y-m-d' or ISO 8601; no zone: UTC), or None."""
    if not isinstance(value, str) or not value.strip():
        return None
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _usable_email(value: Any) -> list[str]:
    if not isinstance(value, str) or not value.strip():
        return []
    try:
        return [normalise_email(value)]
    except InvalidEmail:
        return []


def _on_channel(entries: list[dict[str, Any]], channel: str) -> list[dict[str, Any]]:
    return [e for e in entries if e.get("channel") == channel]


def _reasons(entries: list[dict[str, Any]]) -> str:
    """The reasons of do-not-contact entries in words; never the comments (they may name someone)."""
    names = []
    for e in entries:
        reason = _int(e.get("reason"), default=None)
        name = DNC_REASONS.get(reason, f"reason {reason}")
        names.append("manual, set by someone else" if reason == DNC_MANUAL else name)
    return ", ".join(dict.fromkeys(names))


def _answer_words(body: Mapping[str, Any], missing: str) -> str:
    """What a write's reply says, for an error: its `errors` message, its recordFound, or `missing`."""
    errors = _collection(body.get("errors"))
    if errors:
        first = errors[0]
        text = first.get("message") if isinstance(first, dict) else first
        return redact(f"errors: {text}")[:200]
    if "recordFound" in body:
        return f"recordFound={orjson.dumps(body['recordFound']).decode()}"
    return missing


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _collection(value: Any) -> list[Any]:
    """Mautic collections are arrays or objects keyed by id (and `[]` when empty)."""
    if isinstance(value, dict):
        return list(value.values())
    if isinstance(value, list):
        return value
    return []


def _as_dict(value: Any) -> dict[str, Any]:
    return dict(value) if isinstance(value, dict) else {"value": value}


def _int(value: Any, *, default: int | None) -> Any:
    """Mautic sends counts as numbers or numeric strings ("total": "1")."""
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def _int_id(contact: Any) -> int | None:
    return _int(contact.get("id"), default=None) if isinstance(contact, dict) else None


def _field_values(contact: Mapping[str, Any]) -> dict[str, Any]:
    """Flat alias -> value map: `fields.all`, else the grouped `fields.<group>.<alias>.value`."""
    fields = contact.get("fields")
    if not isinstance(fields, dict):
        return {}
    flat = fields.get("all")
    if isinstance(flat, dict):
        return flat
    values: dict[str, Any] = {}
    for group in fields.values():
        if isinstance(group, dict):
            for alias, field in group.items():
                if isinstance(field, dict) and "value" in field:
                    values[alias] = field["value"]
    return values


def _normalise_phone(value: Any) -> str | None:
    """Digits with an optional leading +; the separators people type are dropped."""
    if not isinstance(value, str | int) or isinstance(value, bool):
        return None
    text = str(value).strip()
    digits = re.sub(r"[\s().-]", "", text)
    return digits if re.fullmatch(r"\+?\d{6,20}", digits) else None


def _error_info(resp: requests.Response) -> tuple[str | None, str]:
    """The Mautic error `type` and a short scrubbed message from an error envelope."""
    try:
        body = orjson.loads(resp.content) if resp.content else None
    except orjson.JSONDecodeError:
        return None, ""
    if not isinstance(body, dict):
        return None, ""
    errors = body.get("errors")
    if isinstance(errors, list) and errors and isinstance(errors[0], dict):
        kind = errors[0].get("type")
        text = errors[0].get("message")
    else:
        kind = body.get("error")
        text = body.get("error_description")
    message = f": {redact(str(text))[:200]}" if text else ""
    return (str(kind) if kind else None), message

