"""The API's FastAPI dependencies: this process's runtime and wake-ups, API-token auth and scope checks.

`create_app` puts the runtime, a `SafeWakeups` and a `Verified` on `app.state`; routes take the first two as `RT` and
`Wake`, and a token of a scope as `Submit`, `Read`, `Act`, `Admin` or `Download` (401 without one, 403 for another
scope).
"""

import threading
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Annotated, Any

import structlog
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from discovery.engine import pipeline
from discovery.engine.runtime import Runtime
from discovery.intake import api_tokens
from discovery.intake.api_tokens import TokenInfo
from workers.api.errors import fail

log = structlog.get_logger(__name__)


class SafeWakeups:
    """Wake-ups that never fail an accepted request: the ledger row is written, the sweeper re-wakes it."""

    def __init__(self, inner: pipeline.Wakeups) -> None:
        self.inner = inner

    def _send(self, fn: Callable[[Any], None], arg: Any, what: str) -> None:
        try:
            fn(arg)
        except Exception as exc:
            log.warning("api.wake_failed", what=what, target=str(arg), error=type(exc).__name__)

    def discover(self, request_id: str) -> None:
        self._send(self.inner.discover, request_id, "discover")

    def execute(self, task_id: int) -> None:
        self._send(self.inner.execute, task_id, "execute")

    def merge(self, request_id: str) -> None:
        self._send(self.inner.merge, request_id, "merge")


async def _runtime(request: Request) -> Runtime:
    return request.app.state.rt  # type: ignore[no-any-return]


async def _wakeups(request: Request) -> pipeline.Wakeups:
    return request.app.state.wake  # type: ignore[no-any-return]


RT = Annotated[Runtime, Depends(_runtime)]
Wake = Annotated[pipeline.Wakeups, Depends(_wakeups)]
_bearer = HTTPBearer(auto_error=False, description="An API token from `dsar token create`")
Creds = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


VERIFIED_SECONDS = 1.0


class Verified:
    """Tokens this process found live in the last VERIFIED_SECONDS, by hash: a client sending requests back to back
    is looked up in the ledger about once a second, not on every call (a lookup cost a round trip and a hop to a
    worker thread, on the API's busiest path). A revoked token therefore stops working within that second; an
    expired one at once (its expiry is checked here too), and scopes are checked on every call. Only tokens that
    passed are kept: an unknown or refused one is looked up every time."""

    def __init__(self) -> None:
        self._seen: dict[str, tuple[float, TokenInfo]] = {}
        self._lock = threading.Lock()

    def put(self, token: str, info: TokenInfo) -> None:
        with self._lock:
            if len(self._seen) > 1000:  # a few clients' tokens at most: stale ones go in bulk
                self._seen.clear()
            self._seen[api_tokens.hash_token(token)] = (time.monotonic() + VERIFIED_SECONDS, info)

    def get(self, token: str, now: datetime) -> TokenInfo | None:
        seen = self._seen.get(api_tokens.hash_token(token))
        if seen is None or seen[0] <= time.monotonic():
            return None
        info = seen[1]
        return None if info.expires_at is not None and info.expires_at <= now else info


def authenticate(rt: Runtime, creds: HTTPAuthorizationCredentials | None, scope: str,
                 verified: Verified | None = None) -> TokenInfo:
    """The token's holder (401 / 403 otherwise), looked up in the ledger; a live one is kept in `verified`."""
    try:
        info = api_tokens.authenticate(rt, creds.credentials if creds else None, scope)
    except api_tokens.TokenRejected as exc:
        fail(401, "unauthorized", str(exc))
    except api_tokens.ScopeMissing as exc:
        fail(403, "forbidden", str(exc))
    if creds is not None and verified is not None:
        verified.put(creds.credentials, info)
    return info


def _need(scope: str) -> Callable[..., Awaitable[TokenInfo]]:
    async def check(request: Request, rt: RT, creds: Creds) -> TokenInfo:
        verified: Verified = request.app.state.verified
        info = verified.get(creds.credentials, rt.clock()) if creds is not None else None
        if info is None:  # the ledger decides, in a worker thread (a blocking query has no place on the loop)
            return await run_in_threadpool(authenticate, rt, creds, scope, verified)
        try:
            api_tokens.require_scope(info, scope)
        except api_tokens.ScopeMissing as exc:
            fail(403, "forbidden", str(exc))
        return info

    return check


Submit = Annotated[TokenInfo, Depends(_need("submit"))]
Read = Annotated[TokenInfo, Depends(_need("read"))]
Admin = Annotated[TokenInfo, Depends(_need("admin"))]
Act = Annotated[TokenInfo, Depends(_need("act"))]  # confirm, verify, extend, deny, cancel, retry (admin too)
Download = Annotated[TokenInfo, Depends(_need("download"))]
