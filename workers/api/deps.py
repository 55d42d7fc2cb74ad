"""The API's FastAPI dependencies: this process's runtime and wake-ups, API-token auth and scope checks.

`create_app` puts the runtime and a `SafeWakeups` on `app.state`; routes take them as `RT` and `Wake`,
and a token of a scope as `Submit`, `Read`, `Act`, `Admin` or `Download` (401 without one, 403 for another scope).
"""

from collections.abc import Callable
from typing import Annotated, Any

import structlog
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

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


def authenticate(rt: Runtime, creds: HTTPAuthorizationCredentials | None, scope: str) -> TokenInfo:
    try:
        return api_tokens.authenticate(rt, creds.credentials if creds else None, scope)
    except api_tokens.TokenRejected as exc:
        fail(401, "unauthorized", str(exc))
    except api_tokens.ScopeMissing as exc:
        fail(403, "forbidden", str(exc))


def _need(scope: str) -> Callable[..., TokenInfo]:
    def check(rt: RT, creds: Creds) -> TokenInfo:
        return authenticate(rt, creds, scope)

    return check


Submit = Annotated[TokenInfo, Depends(_need("submit"))]
Read = Annotated[TokenInfo, Depends(_need("read"))]
Admin = Annotated[TokenInfo, Depends(_need("admin"))]
Act = Annotated[TokenInfo, Depends(_need("act"))]  # confirm, verify, extend, deny, cancel, retry (admin too)
Download = Annotated[TokenInfo, Depends(_need("download"))]
