"""What every console page shares: the templates, the session and scope checks, CSRF, headers and error pages.

Pages take the person at the console as `Reader` or `Actor` (a session with the read or act scope). Without a
session a page redirects to the login form; with one that lacks the scope it answers 403 with a readable page.
Every POST checks the form's `csrf` field against the session's token first (`checked_form`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any
from urllib.parse import quote

from fastapi import Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.datastructures import FormData

from discovery.engine import lifecycle
from discovery.engine.runtime import Runtime
from workers.console import sessions
from workers.console.sessions import Who

if TYPE_CHECKING:
    from jinja2 import Environment

HERE = Path(__file__).resolve().parent
PREFIX = "/ui"

# The API's scopes (discovery/intake/api_tokens.SCOPES) mean the same here; `admin` implies each.
SCOPE_READ, SCOPE_ACT, SCOPE_SUBJECT = "read", "act", "subject"

# No scripts at all: the console works without JavaScript, so none may run (an injected one included).
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
                               "frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer", "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
}


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M UTC") if value else ""


def _day(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d") if value else ""


def mask_email(email: str | None) -> str:
    return lifecycle.mask_email(email or "")


@functools.cache
def templates() -> Environment:
    """The console's templates, made on the first page: Jinja2 is imported then, not by every `dsar serve` whose
    console nobody opens (it is the API's only user of Jinja2)."""
    from jinja2 import Environment, FileSystemLoader

    env = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=True, trim_blocks=True,
                      lstrip_blocks=True)
    env.filters.update(when=_when, day=_day, mask=mask_email, mask_value=lifecycle.mask_value,
                       q=lambda v: quote(str(v), safe=""))
    return env


def page(request: Request, template: str, who: Who | None, status: int = 200, **context: Any) -> HTMLResponse:
    context = {"notice": None, "error": None, **context}
    html = templates().get_template(template).render(who=who, prefix=PREFIX, path=request.url.path,
                                             scopes={"act": SCOPE_ACT, "subject": SCOPE_SUBJECT}, **context)
    return HTMLResponse(html, status_code=status, headers=HEADERS)


def message(request: Request, who: Who | None, status: int, title: str, text: str) -> HTMLResponse:
    return page(request, "message.html", who, status=status, title=title, text=text)


def redirect(path: str, notice: str | None = None, error: str | None = None) -> RedirectResponse:
    """303 after a POST (the browser GETs the page); what happened rides along in the query (no personal data:
    notices are fixed texts, errors the domain's one-line messages, which name ids, never e-mails)."""
    query = "&".join(f"{k}={quote(v[:300])}" for k, v in (("notice", notice), ("error", error)) if v)
    url = f"{PREFIX}{path}" + (f"{'&' if '?' in path else '?'}{query}" if query else "")
    return RedirectResponse(url, status_code=303, headers=HEADERS)


class LoginNeeded(Exception):
    """No live session: the page redirects to the login form (a form post is refused instead)."""


class Refused(Exception):
    """A 403 page: a session without the scope, or a form without its CSRF token."""

    def __init__(self, who: Who | None, text: str) -> None:
        super().__init__(text)
        self.who, self.text = who, text


async def on_login_needed(request: Request, _exc: Exception) -> Response:
    if request.method != "GET":
        return message(request, None, 401, "Logged out", "Your session has ended; log in again.")
    back = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"{PREFIX}/login?next={quote(back)}", status_code=303, headers=HEADERS)


async def on_refused(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, Refused)
    return message(request, exc.who, 403, "Not allowed", exc.text)


def runtime(request: Request) -> Runtime:
    return request.app.state.rt  # type: ignore[no-any-return]


def session_lifetime(rt: Runtime) -> timedelta:
    return timedelta(minutes=rt.settings.api.console_session_minutes)


def secure_cookie(request: Request, rt: Runtime) -> bool:
    mode = rt.settings.api.console_secure_cookie
    if mode != "auto":
        return mode == "always"
    return request.url.scheme == "https" or (rt.settings.api.public_url or "").startswith("https://")


def _need(scope: str) -> Callable[..., Who]:
    def check(request: Request) -> Who:
        who = sessions.current(runtime(request), request.cookies.get(sessions.COOKIE))
        if who is None:
            raise LoginNeeded()
        if not who.allows(scope):
            raise Refused(who, f"Your token ({who.name}) lacks the '{scope}' scope this needs.")
        return who

    return check


Reader = Annotated[Who, Depends(_need(SCOPE_READ))]
Actor = Annotated[Who, Depends(_need(SCOPE_ACT))]


async def checked_form(request: Request, who: Who) -> FormData:
    """The posted form, once its CSRF token matched the session's; Refused otherwise (nothing done)."""
    form = await request.form()
    token = form.get("csrf")
    if not sessions.csrf_ok(who, token if isinstance(token, str) else None):
        raise Refused(who, "This form was refused: its security token is missing or out of date. "
                           "Reload the page and try again.")
    return form


def field(form: FormData, name: str, limit: int = 2000) -> str:
    value = form.get(name)
    return value.strip()[:limit] if isinstance(value, str) else ""
