"""A small stateful FreshChat REST API v2 simulator, written from shared/vendor-apis.md section 1.

Modelled: Bearer-token auth (401 with the {code, status, message} envelope), user search by
`email` / `reference_id` (paged, with `pagination` and `links`), users by id, a user's
conversations, conversation detail and status update, user update, and paged messages answered
as FreshChat does (vendor-source-check.md F6): `{link, messages}` with no pagination block
(idjoo/freshchat-sdk configs/openapi.yaml @ afe30a08, schema `transcript_message_response`), at
most 50 a page whatever `items_per_page` asks (getkarta/freshchat-downloader freshchat_client.py
L107: "50 = maximum items per page available for messages"). No user delete by default: no
FreshChat source lists `DELETE /users/{id}` (vendor-source-check.md F7), so the route answers
405; `user_delete=True` models a tenant that has one (202, asynchronous-looking). Deliberately
pessimistic where the facts are [U]: searches match by case-insensitive *prefix*, so a client
that trusts a hit without checking the returned field picks up the decoy; an unfiltered user
listing is refused.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import urlencode

import orjson
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound
from werkzeug.routing import Map, Rule
from werkzeug.wrappers import Request, Response

from sandbox.people import DECOY_EMAIL, JANE, JOHN, OLA, PEOPLE, Person

_NS = uuid.UUID("6f1c2d7e-0b7a-4c55-9a43-1f2e3d4c5b6a")  # stable ids across runs
_STATUSES = {"new", "assigned", "resolved", "reopened"}
_PERSONAL_FIELDS = ("first_name", "last_name", "email", "phone", "reference_id")
_MAX_PER_PAGE = 50  # users: a larger page is refused (400) [U]
_MAX_MESSAGES_PER_PAGE = 50  # messages: a larger page is cut to 50, silently (freshchat_client.py L107)


def _uid(kind: str, key: str) -> str:
    return str(uuid.uuid5(_NS, f"{kind}:{key}"))


def _json(status: int, body: Any, headers: Iterable[tuple[str, str]] = ()) -> Response:
    return Response(orjson.dumps(body), status=status, content_type="application/json", headers=list(headers))


def _error(code: int, status: str, message: str) -> Response:
    return _json(code, {"code": code, "status": status, "message": message})


class FreshchatSim:
    TOKEN = "sandbox-freshchat-token"
    TOKEN_ENV = "DSAR_FRESHCHAT_TOKEN"

    def __init__(self, *, user_delete: bool = False) -> None:
        self.user_delete = user_delete  # no delete route (FreshChat's reference lists none): DELETE answers 405
        self._lock = threading.Lock()
        self._users: dict[str, dict[str, Any]] = {}
        self._conversations: dict[str, dict[str, Any]] = {}
        self._messages: dict[str, list[dict[str, Any]]] = {}
        self._owner: dict[str, str] = {}  # user id -> the seeded person's e-mail, kept after blanking
        self.requests: list[tuple[str, str]] = []  # (method, path) log for tests
        # Every call that changes state, as (call, user or conversation id), answered or not: what a benchmark counts
        # to show no write was lost or made twice (sandbox.launch.Sandbox.writes).
        self.writes: list[tuple[str, str]] = []
        user_methods = ["GET", "PUT", "DELETE"] if user_delete else ["GET", "PUT"]
        self._map = Map([
            Rule("/v2/users", endpoint="search_users", methods=["GET"]),
            Rule("/v2/users/<uid>", endpoint="user", methods=user_methods),
            Rule("/v2/users/<uid>/conversations", endpoint="user_conversations", methods=["GET"]),
            Rule("/v2/conversations/<cid>", endpoint="conversation", methods=["GET", "PUT"]),
            Rule("/v2/conversations/<cid>/messages", endpoint="conversation_messages", methods=["GET"]),
        ])

    # ------------------------------------------------------------------ seeding

    def add_user(self, person_email: str, **fields: Any) -> str:
        uid = fields.pop("id", None) or _uid("user", person_email)
        user: dict[str, Any] = {
                "id": uid, "email": "", "first_name": "", "last_name": "", "phone": "", "reference_id": "",
                "properties": [], "created_time": "2024-02-11T09:14:22.311Z",
                "updated_time": "2024-05-02T17:40:05.120Z", "login_status": False}
        user.update(fields)
        with self._lock:
            self._users[uid] = user
            self._owner[uid] = person_email.strip().lower()
        return uid

    def add_conversation(self, uid: str, key: str, status: str, message_count: int,
                         with_user: str | None = None) -> str:
        """A conversation of `uid`; with `with_user`, a second user writes every third message in it."""
        cid = _uid("conversation", key)
        agent = _uid("agent", "support")

        def actor(n: int) -> tuple[str, str]:
            if with_user is not None and n % 3 == 2:
                return "user", with_user
            return ("user", uid) if n % 2 == 0 else ("agent", agent)

        with self._lock:
            self._conversations[cid] = {
                "conversation_id": cid, "id": cid, "status": status, "channel_id": _uid("channel", "web"),
                "user_id": uid, "assigned_agent_id": agent, "assigned_group_id": None,
                "properties": {}, "created_time": "2024-03-01T10:00:00.000Z",
                "updated_time": "2024-03-02T10:00:00.000Z",
                # Freshchat's conversation model lists its `users` (user objects); rendered on GET.
                "participants": [uid] + ([with_user] if with_user else []),
            }
            self._messages[cid] = [
                {
                    "id": _uid("message", f"{key}:{n}"),
                    "conversation_id": cid,
                    "channel_id": _uid("channel", "web"),
                    "actor_type": actor(n)[0],
                    "actor_id": actor(n)[1],
                    "user_id": uid,
                    "message_type": "normal",
                    "message_parts": [{"text": {"content": f"message {n} in {key}"}}],
                    "created_time": f"2024-03-01T10:{n // 60:02d}:{n % 60:02d}.000Z",
                }
                for n in range(message_count)
            ]
        return cid

    def seed_demo(self) -> None:
        """Jane: two conversations (one open, one of three message pages); John, Ola, and a prefix decoy."""
        variants = {JANE.key: " Jane.Doe@Example.com ", JOHN.key: JOHN.email, OLA.key: OLA.email.upper()}
        counts = {JANE.key: [("open", "assigned", 120), ("old", "resolved", 7)],
                  JOHN.key: [("open", "new", 3)], OLA.key: [("old", "resolved", 2)]}
        for person in PEOPLE:
            uid = self._seed_person(person, variants[person.key])
            for suffix, status, n in counts[person.key]:
                self.add_conversation(uid, f"{person.key}:{suffix}", status, n)
        # Matches Jane's e-mail and account id as a prefix only: an exact-matching client ignores it.
        decoy = self.add_user(DECOY_EMAIL, email=DECOY_EMAIL, first_name="Janet", last_name="Doel",
                              phone="+61400000000", reference_id=f"{JANE.account_id}0")
        self.add_conversation(decoy, "decoy:open", "new", 4)

    def seed_shared(self) -> str:
        """After seed_demo: a conversation Jane shares with John (both write in it); its id."""
        jane, john = _uid("user", JANE.email), _uid("user", JOHN.email)
        return self.add_conversation(jane, "jane+john:shared", "new", 6, with_user=john)

    def _seed_person(self, person: Person, stored_email: str) -> str:
        return self.add_user(
            person.email, email=stored_email, first_name=person.first_name, last_name=person.last_name,
            phone=person.phone, reference_id=person.account_id,
            properties=[{"name": "plan", "value": "pro"}, {"name": "city", "value": "Oslo"}],
        )

    # ------------------------------------------------------------------ harness API

    def settings(self, base_url: str) -> dict[str, Any]:
        return {"base_url": f"{base_url.rstrip('/')}/v2", "token_env": self.TOKEN_ENV,
                "supports_user_delete": self.user_delete, "items_per_page": 50}

    def env(self) -> dict[str, str]:
        return {self.TOKEN_ENV: self.TOKEN}

    def holdings(self, email: str) -> dict[str, int]:
        """What is still held about the person seeded under `email`, found by seed ownership so a
        blanked profile is still counted: contacts, non-blank personal profile fields, conversations, messages."""
        wanted = email.strip().lower()
        with self._lock:
            uids = [uid for uid, owner in self._owner.items() if owner == wanted and uid in self._users]
            fields = 0
            for uid in uids:
                user = self._users[uid]
                fields += sum(1 for f in _PERSONAL_FIELDS if str(user.get(f) or "").strip())
                fields += sum(1 for p in user.get("properties") or [] if str(p.get("value") or "").strip())
            cids = [cid for cid, c in self._conversations.items() if set(c["participants"]) & set(uids)]
            return {
                "contacts": len(uids),
                "profile_fields": fields,
                "conversations": len(cids),
                "messages": sum(len(self._messages.get(cid, [])) for cid in cids),
            }

    def user_ids(self, email: str) -> list[str]:
        """Ids of the users seeded for that person (still present)."""
        wanted = email.strip().lower()
        with self._lock:
            return sorted(uid for uid, owner in self._owner.items() if owner == wanted and uid in self._users)

    def user(self, uid: str) -> dict[str, Any] | None:
        with self._lock:
            user = self._users.get(uid)
            return orjson.loads(orjson.dumps(user)) if user else None

    def conversation_statuses(self, email: str) -> list[str]:
        wanted = email.strip().lower()
        with self._lock:
            return sorted(c["status"] for c in self._conversations.values()
                          if any(self._owner.get(u) == wanted and u in self._users for u in c["participants"]))

    def messages_by(self, uid: str) -> int:
        """Messages a user wrote (actor_id), in any conversation still held."""
        with self._lock:
            return sum(1 for ms in self._messages.values() for m in ms
                       if m["actor_type"] == "user" and m["actor_id"] == uid)

    # ------------------------------------------------------------------ WSGI

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        return self._dispatch(Request(environ))(environ, start_response)

    @property
    def app(self) -> FreshchatSim:
        return self

    def _dispatch(self, request: Request) -> Response:
        with self._lock:
            self.requests.append((request.method, request.path))
        if request.headers.get("Authorization", "") != f"Bearer {self.TOKEN}":
            return _error(401, "UNAUTHORIZED", "Invalid or missing API token")
        adapter = self._map.bind_to_environ(request.environ)
        try:
            endpoint, args = adapter.match()
        except MethodNotAllowed:
            return _error(405, "METHOD_NOT_ALLOWED", "method not allowed")
        except NotFound:
            return _error(404, "NOT_FOUND", "resource not found")
        except HTTPException as exc:
            return _error(exc.code or 400, "BAD_REQUEST", "bad request")
        handler = getattr(self, f"_{endpoint}")
        with self._lock:
            return handler(request, **args)  # type: ignore[no-any-return]

    # Handlers run under the lock.

    def _search_users(self, request: Request) -> Response:
        email = request.args.get("email")
        ref = request.args.get("reference_id")
        if email is None and ref is None:
            return _error(400, "BAD_REQUEST", "a filter (email or reference_id) is required")
        found = [
            u for u in self._users.values()
            if (email is None or u["email"].strip().lower().startswith(email.strip().lower()))
            and (ref is None or str(u["reference_id"]).startswith(ref))
        ]
        page, per_page, bad = self._paging(request)
        if bad:
            return bad
        return _json(200, self._page_body("users", found, page, per_page, request))

    def _user(self, request: Request, uid: str) -> Response:
        user = self._users.get(uid)
        if user is None:
            return _error(404, "USER_NOT_FOUND", "user not found")
        if request.method == "GET":
            return _json(200, user)
        self.writes.append((f"{request.method} /v2/users", uid))
        if request.method == "DELETE":
            # [U] what a user delete does to conversations: pessimistically, every one the user is in goes,
            # including one shared with another user.
            for cid in [c for c, conv in self._conversations.items() if uid in conv["participants"]]:
                del self._conversations[cid]
                self._messages.pop(cid, None)
            del self._users[uid]
            return _json(202, {"code": 202, "status": "ACCEPTED", "message": "User deletion request accepted"})
        try:
            body = orjson.loads(request.get_data())
        except orjson.JSONDecodeError:
            return _error(400, "BAD_REQUEST", "body is not JSON")
        if not isinstance(body, dict):
            return _error(400, "BAD_REQUEST", "body must be an object")
        for key in _PERSONAL_FIELDS:
            if key in body:
                user[key] = "" if body[key] is None else str(body[key])
        if "properties" in body:
            props = body["properties"]
            if not isinstance(props, list) or not all(isinstance(p, dict) and p.get("name") for p in props):
                return _error(400, "BAD_REQUEST", "properties must be a list of {name, value}")
            merged = {p["name"]: p for p in user["properties"]}
            for p in props:  # [U] merge by name: a partial list leaves other properties alone
                merged[p["name"]] = {"name": p["name"], "value": p.get("value")}
            user["properties"] = list(merged.values())
        user["updated_time"] = "2024-06-01T00:00:00.000Z"
        return _json(200, user)

    def _user_conversations(self, request: Request, uid: str) -> Response:
        if uid not in self._users:
            return _error(404, "USER_NOT_FOUND", "user not found")
        items = [{"id": cid, "status": c["status"], "channel_id": c["channel_id"]}
                 for cid, c in self._conversations.items() if uid in c["participants"]]
        return _json(200, {"conversations": items})

    def _conversation(self, request: Request, cid: str) -> Response:
        conversation = self._conversations.get(cid)
        if conversation is None:
            return _error(404, "CONVERSATION_NOT_FOUND", "conversation not found")
        if request.method == "PUT":
            self.writes.append(("PUT /v2/conversations", cid))
            try:
                body = orjson.loads(request.get_data())
            except orjson.JSONDecodeError:
                return _error(400, "BAD_REQUEST", "body is not JSON")
            status = body.get("status") if isinstance(body, dict) else None
            if status not in _STATUSES:
                return _error(400, "BAD_REQUEST", "invalid conversation status")
            conversation["status"] = status
        view = {k: v for k, v in conversation.items() if k != "participants"}
        view["users"] = [self._users[u] for u in conversation["participants"] if u in self._users]
        return _json(200, view)

    def _conversation_messages(self, request: Request, cid: str) -> Response:
        if cid not in self._conversations:
            return _error(404, "CONVERSATION_NOT_FOUND", "conversation not found")
        try:
            page = int(request.args.get("page", "1"))
            asked = int(request.args.get("items_per_page", "10"))
        except ValueError:
            return _error(400, "BAD_REQUEST", "page and items_per_page must be integers")
        if page < 1 or asked < 1:
            return _error(400, "BAD_REQUEST", "page and items_per_page must be >= 1")
        per_page = min(asked, _MAX_MESSAGES_PER_PAGE)  # the server's cap, applied without a word
        messages = self._messages.get(cid, [])[(page - 1) * per_page: page * per_page]
        # FreshChat's transcript_message_response: `link` (singular; what it points at is [U]) and `messages`,
        # no `pagination` or `links` block.
        link = {"href": f"{request.path}?{urlencode(request.args.to_dict())}", "rel": "self", "type": "GET"}
        return _json(200, {"link": link, "messages": messages})

    def _paging(self, request: Request) -> tuple[int, int, Response | None]:
        try:
            page = int(request.args.get("page", "1"))
            per_page = int(request.args.get("items_per_page", "10"))
        except ValueError:
            return 0, 0, _error(400, "BAD_REQUEST", "page and items_per_page must be integers")
        if page < 1 or not 1 <= per_page <= _MAX_PER_PAGE:
            return 0, 0, _error(400, "BAD_REQUEST", f"page must be >= 1 and items_per_page 1..{_MAX_PER_PAGE}")
        return page, per_page, None

    @staticmethod
    def _page_body(key: str, items: list[Any], page: int, per_page: int, request: Request) -> dict[str, Any]:
        total_pages = max(1, -(-len(items) // per_page))
        links: dict[str, Any] = {}
        if page < total_pages:
            query = {**request.args.to_dict(), "page": str(page + 1), "items_per_page": str(per_page)}
            links["next_page"] = {"href": f"{request.path}?{urlencode(query)}", "rel": "next"}
        return {
            key: items[(page - 1) * per_page: page * per_page],
            "pagination": {"total_items": len(items), "total_pages": total_pages, "current_page": page,
                           "items_per_page": per_page},
            "links": links,
        }
