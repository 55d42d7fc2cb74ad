"""FreshChat (Freshworks) REST API v2: chat contacts ("users"), their conversations and messages."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any
from urllib.parse import quote, urlsplit

import orjson
import requests
import structlog

from connectors.base import (
    N_,
    Connector,
    ConnectorContext,
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
    TransientError,
    UnsupportedAction,
    note,
)
from connectors.emails import InvalidEmail, email_forms, normalise_email
from connectors.http import HttpClient, NotFound, RetryPolicy, in_parallel, paginate
from connectors.ratelimit import make_rate_limiter
from connectors.redact import redact
from connectors.retention import RetentionRule, VendorRetentionSpec, vendor_rule
from connectors.vendor_settings import FRESHCHAT_MAX_MESSAGES_PER_PAGE, FreshchatSettings, parse

log = structlog.get_logger(__name__)

ENTITIES = ("user", "conversations", "messages")
# A reserved, non-personal address (RFC 2606 .invalid): the health check must not search for anyone real.
PROBE_EMAIL = "dsar-healthcheck@invalid"
FORGET_STEP = N_("Forget the contact in FreshChat (Contacts > Forget)")
# Why records are left alone: they belong to a conversation the subject shares with another FreshChat user.
OTHER_USERS_MESSAGE = N_("another user's message in a conversation shared with the subject")
SHARED_CONVERSATION = N_("holds another user's messages; not deleted or changed (only the subject's part is theirs)")
# A write whose reply says it changed nothing: the task fails (issue 10 point 9), quoting the reply.
NOTHING_CHANGED = N_("{call} answered that it changed nothing ({answer}); the task is not done")
_BLANKED = ("first_name", "last_name", "email", "phone", "reference_id")
# How a FreshChat connector states where it learned an identifier: a user id another FreshChat account (a second
# system of this kind) learned is that account's, never looked up here.
LEARNED_VIA = N_("{system}: user {id} ({how}), field {field}")


@dataclass
class _Conversation:
    """One conversation as read for a decision: its detail (None if gone), its messages, and the ids of the
    other FreshChat users in it (its `users` list, or the actor of a `user` message), not the subject's."""

    id: str
    detail: dict[str, Any] | None
    messages: list[dict[str, Any]]
    others: set[str]


@dataclass
class _User:
    id: str
    data: dict[str, Any]
    full: bool  # True when `data` came from GET /users/{id}, not from a search listing
    how: str = N_("matched")  # how it was reached: matched by e-mail, reference id or user id


class FreshchatConnector(Connector):
    """Locate, export, erase and restrict a person's FreshChat contact, conversations and messages.

    Behaviours resting on unverified ([U]) vendor facts, and what switches them:
    - `DELETE /users/{id}` is very probably absent: no FreshChat source lists it (the reference generated
      from Freshchat's docs has list/create/get/update only; vendor-source-check.md F7). By default
      (setting `supports_user_delete` false) erase blanks the profile with `PUT /users/{id}` (blanking
      semantics [U] too) and adds the manual "Forget" step. Where the setting is true and the delete
      answers any 4xx but 429 (400/401/403 as much as 404/405), it falls back the same way.
    - `reference_id` holding our account id is an integrator convention [L]: setting
      `reference_id_identity` (default "account_id"; null switches reference-id look-ups off).
    - Search semantics of `?email=` / `?reference_id=` (exact or prefix) are unknown: every hit is
      checked against the returned field (e-mail case-insensitively) and dropped when it differs.
      A 404 from a search is read as "no match".
    - Messages are paged with `page` and `items_per_page` (default and maximum 50, the server's cap per
      getkarta/freshchat-downloader freshchat_client.py L107). The answer is `{link, messages}` with no
      pagination block (idjoo/freshchat-sdk openapi `transcript_message_response`), so paging stops on a
      short page or an empty one; a page size above the cap would make page 1 look short.
    - `GET /users/{id}/conversations` is read as one unpaginated list, as the Airbyte connector does [L].
    - No restriction flag exists: restrict resolves open conversations and sets a user property named by
      setting `restricted_property` (default "gdpr_restricted"); the property is written with the
      user's other properties kept, in case PUT replaces the whole list [U].
    - 429 `Retry-After` is honoured when sent [U], else exponential backoff (connectors.http).
    - A write must not be a no-op (issue 10 point 9), but FreshChat's write replies are known from client
      schemas only: `PUT /users/{id}` answers the user [L: idjoo openapi `user`], `PUT /conversations/{id}`
      the conversation [L: botpress], `DELETE /users/{id}` has no known reply [U]. So a reply is held to
      what it shows and nothing more: a returned user whose blanked fields are still set, whose restriction
      property lacks our value, or a conversation whose status is not `resolved`, fails the task; a reply
      without those fields (or a user delete's 200/202/204) is taken as done.
    Conversations are exported `parallel_calls` at a time (default 4), paced by the shared rate limit.

    Only the subject's data (issue 9): identifiers are learned from the user's own profile, never from a
    conversation's `users` or message actors. A conversation that also holds another user (its `users`
    list, or a `user` message by another `actor_id`) puts that user's id into `Hits.touches` (the plan
    refuses an erasure or restriction unless confirmed); erase then never DELETEs that user (the delete
    may take the conversation along) but blanks the profile and names the shared conversations in the
    manual step, and restrict leaves them unresolved (both in `Receipt.skipped`). The export leaves out
    other users' messages and their entries in a conversation's `users`.
    """

    entities = ENTITIES

    def __init__(
        self,
        name: str,
        http: HttpClient,
        *,
        supports_user_delete: bool = False,
        reference_id_identity: IdentityType | None = IdentityType.ACCOUNT_ID,
        items_per_page: int = FRESHCHAT_MAX_MESSAGES_PER_PAGE,
        restricted_property: str = "gdpr_restricted",
        parallel_calls: int = 4,
        retention: Iterable[VendorRetentionSpec] = (),
    ) -> None:
        self.name = name
        self.http = http
        self.retention = tuple(retention)
        self.supports_user_delete = supports_user_delete
        self.reference_id_identity = reference_id_identity
        # Never above the server's cap: every page would look short and paging would stop after page 1.
        self.items_per_page = min(items_per_page, FRESHCHAT_MAX_MESSAGES_PER_PAGE)
        self.restricted_property = restricted_property
        self.parallel_calls = parallel_calls

    # ------------------------------------------------------------------ settings

    @classmethod
    def from_settings(
        cls,
        name: str,
        settings: Mapping[str, Any],
        ctx: ConnectorContext,
        *,
        retry: RetryPolicy | None = None,
        session: requests.Session | None = None,
    ) -> FreshchatConnector:
        config = parse(FreshchatSettings, name, settings)
        token = ctx.secret(name, "token_env", config.token_env)
        host = urlsplit(config.base_url).hostname
        http = HttpClient(
            name,
            config.base_url,
            headers={"Authorization": f"Bearer {token}"},
            timeout=(min(5.0, config.timeout_s), config.timeout_s),
            retry=retry,
            rate_limiter=make_rate_limiter(f"freshchat:{host}", config.rate_per_second, ctx.redis_url, ctx.namespace),
            session=session,
        )
        return cls(
            name, http, supports_user_delete=config.supports_user_delete,
            reference_id_identity=config.reference_id_identity, items_per_page=config.items_per_page,
            restricted_property=config.restricted_property, parallel_calls=config.parallel_calls,
            retention=config.retention_rules,
        )

    def accepts(self) -> set[IdentityType]:
        types = {IdentityType.EMAIL, IdentityType.FRESHCHAT_USER_ID}
        if self.reference_id_identity is not None:
            types.add(self.reference_id_identity)
        return types

    def close(self) -> None:
        self.http.close()

    def policies(self) -> dict[str, EntityPolicy]:
        with_contact = Note(N_("deleted with the contact; where the API cannot delete users, forgotten by hand "
                               "(Contacts > Forget)"))
        return {
            "user": EntityPolicy.of(
                Note(N_("DELETE the FreshChat user; where unsupported, blank the profile and forget the contact by "
                        "hand") if self.supports_user_delete else
                     N_("blank the profile (PUT) and forget the contact by hand (Contacts > Forget)")),
                note(N_("user property '{property}' set to true"), property=self.restricted_property),
            ),
            "conversations": EntityPolicy.of(with_contact, Note(N_("open conversations resolved"))),
            # No per-message restriction exists; the user property and resolved conversations cover them.
            "messages": EntityPolicy.of(with_contact, None),
        }

    # ------------------------------------------------------------------ actions

    def locate(self, identities: Identities) -> Hits:
        users = self._resolve(identities)
        if not users:
            return Hits(self.name, found=False)
        own = set(users)
        conversations = self._conversations(users.values(), own)
        learned, touches = self._learned(users.values(), identities)
        hits = Hits(
            self.name,
            found=True,
            counts={"user": len(users), "conversations": len(conversations)},
            learned=learned,
        )
        hits.touches["user"] = touches
        # Erasing the contact deletes its conversations (Forget; a user DELETE may too): one that holds another
        # user's messages names that user, so the plan refuses unless an operator confirms.
        shared = {Identity(IdentityType.FRESHCHAT_USER_ID, uid, source=self.name)
                  for c in conversations for uid in c.others}
        if shared:
            hits.touches["conversations"] = shared | {Identity(IdentityType.FRESHCHAT_USER_ID, u, source=self.name)
                                                      for u in own}
        theirs = sum(1 for c in conversations for m in c.messages if _other_author(m, own))
        if theirs:
            hits.skipped["messages"] = {OTHER_USERS_MESSAGE: theirs}
        return hits

    def export(self, identities: Identities, entities: Iterable[str] | None = None) -> Iterator[Record]:
        """The subject's profile, conversations and messages.

        In a conversation shared with another FreshChat user, that user's messages are left out (their own
        words, Art. 15(4)), and the conversation's participant list keeps only the subject; agent and system
        messages stay, without another user's id.
        """
        wanted = self._wanted(entities)
        users = self._resolve(identities)
        own = set(users)
        exported: set[str] = set()
        for user in users.values():
            if "user" in wanted:
                profile = self._profile(user)
                if profile is None:
                    continue  # deleted between the search and now
                yield Record("user", user.id, profile)
            if not wanted & {"conversations", "messages"}:
                continue
            cids = [cid for cid in self._conversation_ids(user.id) if cid not in exported]
            exported.update(cids)
            # Conversations are fetched at once (each pages its own messages); records still stream in order.
            jobs = [partial(self._conversation_records, cid, wanted, own) for cid in cids]
            yield from in_parallel(jobs, max_workers=self.parallel_calls)

    def _conversation_records(self, cid: str, wanted: set[str], own: set[str]) -> Iterator[Record]:
        if "conversations" in wanted:
            conversation = self._get_or_none(f"conversations/{_seg(cid)}")
            if isinstance(conversation, dict):
                yield Record("conversations", cid, _own_view(conversation, own))
        if "messages" in wanted:
            for index, message in enumerate(self._messages(cid)):
                if _other_author(message, own):
                    continue
                message_id = str(message.get("id") or f"{cid}:{index}")
                yield Record("messages", message_id, {**_without_others(message, own), "conversation_id": cid})

    def erase(self, identities: Identities, entities: Iterable[str] | None = None) -> Receipt:
        if "user" not in self._wanted(entities):
            raise UnsupportedAction.of(self.name, Note(N_(
                "FreshChat erases whole contacts; conversations or messages alone cannot be deleted")))
        receipt = Receipt(self.name, "erase")
        users = self._resolve(identities)
        own = set(users)
        for user in users.values():
            shared = [c.id for c in self._conversations([user], own) if c.others]
            if shared:
                # Deleting the user may delete its conversations with it, and no call deletes only the
                # subject's messages: blank the profile instead and leave the shared conversations alone.
                _skip(receipt, "conversations", len(shared))
                receipt.note(N_("{count} conversation(s) also hold another user's messages: the user is not deleted "
                                "(that could delete them); the profile is blanked instead"), count=len(shared))
                self._blank(user, receipt, shared)
                continue
            path = f"users/{_seg(user.id)}"
            if self.supports_user_delete:
                resp = self.http.request("DELETE", path, ok=_DELETE_ANSWERS)
                if resp.status_code < 400:
                    _count(receipt, "user")
                    state = "requested" if resp.status_code == 202 else "done"
                    receipt.vendor_refs.append(f"user {user.id}: deletion {state} (HTTP {resp.status_code}"
                                               f"{_envelope_text(resp)})")
                    if state == "requested":
                        receipt.note(N_("DELETE /users/{{id}}: deletion requested, carried out asynchronously by "
                                        "FreshChat"))
                    else:
                        receipt.note(N_("DELETE /users/{{id}}: deletion done"))
                    continue
                receipt.note(N_("DELETE /users/{{id}} answered HTTP {status}{answer}: user deletion is not "
                                "available; blanking the profile instead"), status=resp.status_code,
                             answer=_envelope_text(resp))
            self._blank(user, receipt)
        return receipt

    def restrict(self, identities: Identities, entities: Iterable[str] | None = None) -> Receipt:
        wanted = self._wanted(entities)
        if not wanted & {"user", "conversations"}:
            raise UnsupportedAction.of(self.name, Note(N_(
                "restriction applies to the user and its conversations, not messages")))
        receipt = Receipt(self.name, "restrict")
        users = self._resolve(identities)
        own = set(users)
        for user in users.values():
            if "conversations" in wanted:
                resolved = self._resolve_open_conversations(user, own, receipt)
                if resolved:
                    _count(receipt, "conversations", resolved)
                receipt.note(N_("resolved {count} open conversation(s)"), count=resolved)
            if "user" in wanted and self._set_restricted(user, "true"):
                _count(receipt, "user")
                receipt.note(N_("user property '{property}' set to true"), property=self.restricted_property)
        return receipt

    def lift_restriction(self, identities: Identities, entities: Iterable[str] | None = None) -> Receipt:
        if "user" not in self._wanted(entities):
            raise UnsupportedAction.of(self.name, Note(N_("lifting a restriction changes the user property only")))
        receipt = Receipt(self.name, "lift_restriction")
        for user in self._resolve(identities).values():
            if self._set_restricted(user, "false"):
                _count(receipt, "user")
                receipt.note(N_("user property '{property}' set to false; resolved conversations stay resolved"),
                             property=self.restricted_property)
        return receipt

    def custom_fields(self, now: datetime | None = None) -> list[dict[str, Any]]:
        """Names of the user properties on recently updated users (values are never kept).

        No source lists a FreshChat call that lists user property definitions [U]; a page of users filtered by
        `updated_from`/`updated_to` (ISO 8601, as Airbyte's source-freshchat sends them [L]) carries each user's
        `properties: [{name, value}]` [L], so the names seen there are what this account holds. Properties no
        recent user has are not listed.
        """
        now = now or datetime.now(UTC)
        params = {"updated_from": (now - timedelta(days=365)).strftime("%Y-%m-%dT%H:%M:%S.000Z"),
                  "updated_to": now.strftime("%Y-%m-%dT%H:%M:%S.000Z"),
                  "items_per_page": str(self.items_per_page), "page": "1"}
        body = self.http.json("GET", "users", params=params)
        users = body.get("users") if isinstance(body, dict) else None
        if not isinstance(users, list):
            raise PermanentError(self.name, "GET /users answered without a 'users' list")
        names: dict[str, None] = {}
        for user in users:
            for prop in (user.get("properties") or []) if isinstance(user, dict) else []:
                if isinstance(prop, dict) and prop.get("name"):
                    names[str(prop["name"])] = None
        return [{"name": name, "label": name, "type": "user property"} for name in names]

    # -- retention (docs/retention.md) -------------------------------------------------------------------
    # FreshChat's API lists users only within a time window and has no user delete (vendor-apis.md 1.2, F7); its
    # retention policy is set up by FreshChat support, not read through the API (vendor-apis.md 1.4). So a rule
    # is `by: request` (chat kept until the person asks) or `by: vendor_setting` (that policy, confirmed by hand).

    def retention_rules(self) -> list[RetentionRule]:
        return [vendor_rule(self.name, spec) for spec in self.retention]

    def check(self) -> Health:
        health = Health(self.name, ok=True)
        try:
            body = self.http.json("GET", "users", params={"email": PROBE_EMAIL})
        except NotFound:
            health.warnings.append("GET /users answered 404 for the probe search; check that base_url ends in /v2")
            return health
        except (PermanentError, TransientError) as exc:
            health.ok = False
            health.problems.append(exc.message)
            return health
        if not isinstance(body, dict) or not isinstance(body.get("users"), list):
            health.ok = False
            health.problems.append("GET /users did not answer with a 'users' list; is base_url the FreshChat v2 API?")
        return health

    # ------------------------------------------------------------------ finding users

    def _resolve(self, identities: Identities) -> dict[str, _User]:
        """Every FreshChat user the identities point at, each checked against the field searched by."""
        users: dict[str, _User] = {}

        def add(data: Any, full: bool, how: str) -> None:
            if isinstance(data, dict) and data.get("id") and str(data["id"]) not in users:
                users[str(data["id"])] = _User(str(data["id"]), data, full, how)

        # The look-ups are independent: run them at once, then take their hits in a fixed order.
        jobs: list[Callable[[], Iterable[tuple[Any, bool, str]]]] = []
        for email in identities.of(IdentityType.EMAIL):
            for form in email_forms(email):
                jobs.append(partial(self._by_email, form, email))
        if self.reference_id_identity is not None:
            for ref in identities.of(self.reference_id_identity):
                jobs.append(partial(self._by_reference, ref))
        for uid in sorted({i.value for i in identities if i.type == IdentityType.FRESHCHAT_USER_ID and not (
                i.source != self.name and i.via_note is not None and i.via_note.msgid == LEARNED_VIA)}):
            jobs.append(partial(self._by_id, uid))
        for data, full, how in in_parallel(jobs, max_workers=self.parallel_calls):
            add(data, full, how)
        return users

    def _by_email(self, form: str, email: str) -> list[tuple[Any, bool, str]]:
        return [(c, False, N_("matched by e-mail")) for c in self._search("email", form)
                if _same_email(c.get("email"), email)]

    def _by_reference(self, ref: str) -> list[tuple[Any, bool, str]]:
        # The search may not be exact; trust only a user whose reference_id is ours.
        return [(c, False, N_("matched by reference_id")) for c in self._search("reference_id", ref)
                if str(c.get("reference_id") or "") == ref]

    def _by_id(self, uid: str) -> list[tuple[Any, bool, str]]:
        data = self._get_or_none(f"users/{_seg(uid)}")
        return [(data, True, N_("matched by user id"))] if isinstance(data, dict) and str(data.get("id") or "") == uid \
            else []

    def _search(self, field: str, value: str) -> list[dict[str, Any]]:
        try:
            body = self.http.json("GET", "users", params={field: value})
        except NotFound:
            return []
        users = body.get("users") if isinstance(body, dict) else None
        if not isinstance(users, list):
            raise PermanentError(self.name, f"GET /users?{field}= answered without a 'users' list")
        return [u for u in users if isinstance(u, dict)]

    def _learned(self, users: Iterable[_User], identities: Identities) -> tuple[list[Identity], set[Identity]]:
        """Identifiers from the users' own profiles (never a conversation's other participants), and every
        identifier on those profiles (what an erasure changes)."""
        learned: list[Identity] = []
        touches: set[Identity] = set()

        def learn(user: _User, type_: IdentityType, value: str, field: str) -> None:
            identity = Identity.learned(type_, value, self.name, note(
                LEARNED_VIA, system=self.name, id=user.id, how=Note(user.how),
                field=field))
            touches.add(identity)
            if identity not in identities and identity not in learned:
                learned.append(identity)

        for user in users:
            learn(user, IdentityType.FRESHCHAT_USER_ID, user.id, "id")
            phone = str(user.data.get("phone") or "").strip()
            if phone:
                learn(user, IdentityType.PHONE, phone, "phone")
            raw_email = str(user.data.get("email") or "").strip()
            if raw_email:
                try:
                    learn(user, IdentityType.EMAIL, normalise_email(raw_email), "email")
                except InvalidEmail:
                    log.info("freshchat.unusable_email", system=self.name)
        return learned, touches

    # ------------------------------------------------------------------ reading

    def _get_or_none(self, path: str) -> Any:
        try:
            return self.http.json("GET", path)
        except NotFound:
            return None

    def _profile(self, user: _User) -> dict[str, Any] | None:
        """The full profile; search listings may carry fewer fields than GET /users/{id}."""
        if user.full:
            return user.data
        data = self._get_or_none(f"users/{_seg(user.id)}")
        if not isinstance(data, dict):
            return None
        user.data, user.full = data, True
        return data

    def _conversation_ids(self, uid: str) -> list[str]:
        body = self._get_or_none(f"users/{_seg(uid)}/conversations")
        if body is None:
            return []
        items = body.get("conversations") if isinstance(body, dict) else None
        if not isinstance(items, list):
            raise PermanentError(self.name, "GET /users/{id}/conversations answered without a 'conversations' list")
        ids: list[str] = []
        for item in items:
            cid = str(item.get("id") or item.get("conversation_id") or "") if isinstance(item, dict) else ""
            if cid and cid not in ids:
                ids.append(cid)
        return ids

    def _conversations(self, users: Iterable[_User], own: set[str]) -> list[_Conversation]:
        """The users' conversations (each once), read whole to see who else is in them."""
        cids: list[str] = []
        for user in users:
            cids.extend(cid for cid in self._conversation_ids(user.id) if cid not in cids)
        jobs = [partial(self._conversation, cid, own) for cid in cids]
        return list(in_parallel(jobs, max_workers=self.parallel_calls))

    def _conversation(self, cid: str, own: set[str]) -> list[_Conversation]:
        detail = self._get_or_none(f"conversations/{_seg(cid)}")
        detail = detail if isinstance(detail, dict) else None
        messages = list(self._messages(cid))
        others = {uid for uid in _participants(detail) if uid not in own}
        others.update(str(m.get("actor_id")) for m in messages if _other_author(m, own))
        return [_Conversation(cid, detail, messages, others)]

    def _messages(self, cid: str) -> Iterator[dict[str, Any]]:
        path = f"conversations/{_seg(cid)}/messages"

        def fetch(page: int) -> tuple[list[Any], bool]:
            try:
                body = self.http.json("GET", path, params={"page": page, "items_per_page": self.items_per_page})
            except NotFound:
                return [], False
            items = body.get("messages") if isinstance(body, dict) else None
            if not isinstance(items, list):
                raise PermanentError(self.name, "GET /conversations/{id}/messages answered without a 'messages' list")
            # The answer is {link, messages} with no pagination block: a short or empty page is the last one.
            more = bool(items) and len(items) >= self.items_per_page
            return [m for m in items if isinstance(m, dict)], more

        yield from paginate(fetch)

    # ------------------------------------------------------------------ writing

    def _blank(self, user: _User, receipt: Receipt, shared: list[str] | None = None) -> None:
        profile = self._profile(user)
        if profile is None:
            receipt.note(N_("user no longer exists; nothing to blank"))
            return
        properties = [
            {"name": p["name"], "value": ""} for p in profile.get("properties") or []
            if isinstance(p, dict) and p.get("name")
        ]
        body = {"first_name": "", "last_name": "", "email": "", "phone": "", "reference_id": "",
                "properties": properties}
        try:
            resp = self.http.request("PUT", f"users/{_seg(user.id)}", json=body)
        except NotFound:
            receipt.note(N_("user no longer exists; nothing to blank"))
            return
        reply = _reply(resp)
        still = [key for key in _BLANKED if key in reply and reply[key] not in ("", None)]
        if still:  # the user came back with the fields we blanked still set: the update did nothing there
            self._nothing_changed("PUT /users/{id}", f"{', '.join(still)} still set in the returned user")
        _count(receipt, "user")
        receipt.note(N_("profile blanked (names, e-mail, phone, reference id, {count} propert(y/ies)); "
                        "conversations and messages remain until the contact is forgotten"), count=len(properties))
        if shared:
            receipt.manual(N_("{forget}: user id {id} (removes its conversations and messages); but conversation(s) "
                              "{conversations} also hold another user's messages and Forget deletes them too: forget "
                              "the contact only once those are settled (another person's data)"),
                           forget=Note(FORGET_STEP), id=user.id, conversations=", ".join(shared))
        else:
            receipt.manual(N_("{forget}: user id {id} (removes its conversations and messages)"),
                           forget=Note(FORGET_STEP), id=user.id)

    def _resolve_open_conversations(self, user: _User, own: set[str], receipt: Receipt) -> int:
        """Resolve the user's open conversations; one shared with another user is left as it is."""
        resolved = 0
        for conversation in self._conversations([user], own):
            if conversation.others:
                _skip(receipt, "conversations")
                continue
            detail = conversation.detail
            if detail is None or str(detail.get("status") or "").lower() == "resolved":
                continue
            try:
                resp = self.http.request("PUT", f"conversations/{_seg(conversation.id)}", json={"status": "resolved"})
            except NotFound:
                continue
            status = _reply(resp).get("status")
            if status is not None and str(status).lower() != "resolved":
                self._nothing_changed("PUT /conversations/{id}", f"status={status}")
            resolved += 1
        return resolved

    def _set_restricted(self, user: _User, value: str) -> bool:
        profile = self._profile(user)
        if profile is None:
            return False
        properties: list[dict[str, Any]] = []
        replaced = False
        for prop in profile.get("properties") or []:
            if not isinstance(prop, dict) or not prop.get("name"):
                continue
            if prop["name"] == self.restricted_property:
                properties.append({"name": self.restricted_property, "value": value})
                replaced = True
            else:
                properties.append({"name": prop["name"], "value": prop.get("value")})
        if not replaced:
            properties.append({"name": self.restricted_property, "value": value})
        try:
            resp = self.http.request("PUT", f"users/{_seg(user.id)}", json={"properties": properties})
        except NotFound:
            return False
        returned = _reply(resp).get("properties")
        if isinstance(returned, list):
            name = self.restricted_property
            values = [p.get("value") for p in returned if isinstance(p, dict) and p.get("name") == name]
            if str(values[-1] if values else None).lower() != value:
                shown = f"{self.restricted_property}={values[-1]}" if values else f"no {self.restricted_property}"
                self._nothing_changed("PUT /users/{id}", f"{shown} in the returned user's properties")
        return True

    def _nothing_changed(self, call: str, answer: str) -> None:
        raise PermanentError.of(self.name, note(NOTHING_CHANGED, call=call, answer=redact(answer)[:200]))

    def _wanted(self, entities: Iterable[str] | None) -> set[str]:
        if entities is None:
            return set(ENTITIES)
        wanted = set(entities)
        unknown = sorted(wanted - set(ENTITIES))
        if unknown:
            raise PermanentError(self.name, f"unknown entity {', '.join(unknown)}; known: {', '.join(ENTITIES)}")
        return wanted


# What a user DELETE may answer without failing the erasure: done or accepted, or any 4xx but 429 (retried by
# HttpClient), read as "user deletion is not available here" and answered by blanking plus the Forget step.
_DELETE_ANSWERS = (200, 202, 204, *(status for status in range(400, 500) if status != 429))


def _seg(value: str) -> str:
    """One path segment: ids come from the vendor or the request, never let them change the path."""
    return quote(value, safe="")


def _same_email(stored: Any, wanted: str) -> bool:
    if not isinstance(stored, str) or not stored.strip():
        return False
    try:
        return normalise_email(stored) == wanted
    except InvalidEmail:
        return stored.strip().casefold() == wanted.casefold()


def _participants(detail: dict[str, Any] | None) -> list[str]:
    """User ids in a conversation's `users` list (Freshchat's conversation model) and its `user_id`."""
    if detail is None:
        return []
    ids = [str(u.get("id")) for u in detail.get("users") or [] if isinstance(u, dict) and u.get("id")]
    if detail.get("user_id"):
        ids.append(str(detail["user_id"]))
    return ids


def _other_author(message: Mapping[str, Any], own: set[str]) -> bool:
    """A message written by a FreshChat user who is not the subject."""
    return message.get("actor_type") == "user" and bool(message.get("actor_id")) \
        and str(message.get("actor_id")) not in own


def _own_view(conversation: dict[str, Any], own: set[str]) -> dict[str, Any]:
    """The conversation as the subject may see it: other participants (their profiles) left out."""
    view = dict(conversation)
    users = view.get("users")
    if isinstance(users, list):
        kept = [u for u in users if isinstance(u, dict) and str(u.get("id") or "") in own]
        view["users"] = kept
        if len(kept) < len(users):
            view["other_participants_left_out"] = len(users) - len(kept)
    if view.get("user_id") and str(view["user_id"]) not in own:
        del view["user_id"]
    return view


def _without_others(message: dict[str, Any], own: set[str]) -> dict[str, Any]:
    """An agent or system message without another user's id in it."""
    return {k: v for k, v in message.items() if not (k == "user_id" and v and str(v) not in own)}


def _skip(receipt: Receipt, entity: str, n: int = 1) -> None:
    why = receipt.skipped.setdefault(entity, {})
    why[SHARED_CONVERSATION] = why.get(SHARED_CONVERSATION, 0) + n


def _count(receipt: Receipt, entity: str, n: int = 1) -> None:
    receipt.changed[entity] = receipt.changed.get(entity, 0) + n


def _reply(resp: requests.Response) -> dict[str, Any]:
    """A write's JSON reply as an object ({} when there is none or it is not JSON: nothing to hold it to)."""
    try:
        body = orjson.loads(resp.content) if resp.content else None
    except orjson.JSONDecodeError:
        return {}
    return body if isinstance(body, dict) else {}


def _envelope_text(resp: requests.Response) -> str:
    """`status: message` from FreshChat's {code, status, message} envelope, scrubbed of personal data."""
    try:
        body = orjson.loads(resp.content) if resp.content else None
    except orjson.JSONDecodeError:
        return ""
    if not isinstance(body, dict):
        return ""
    text = ": ".join(str(body[k]) for k in ("status", "message") if body.get(k))
    return f", {redact(text)[:200]}" if text else ""
