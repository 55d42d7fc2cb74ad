"""The console (`dsar serve` at /ui): server-rendered pages for operators, and the API's /docs served offline.

Jinja2 templates (autoescaped), one hand-written stylesheet and the Swagger UI assets are all served by dsar
itself, so both work on an air-gapped host; the pages need no JavaScript (the Content-Security-Policy allows
none). Logging in exchanges an API token with the `read` scope for a session cookie (`sessions`); acting needs
`act`, the download button `download`; subjects' e-mails and identifiers show in full only with `subject`, the
same scopes as the API's. See docs/console.md.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from workers.console import docs, routes
from workers.console.web import HERE, PREFIX, LoginNeeded, Refused, on_login_needed, on_refused

__all__ = ["mount"]


def mount(app: FastAPI) -> None:
    """Add the console's routes, its stylesheet, its error pages and the offline /docs to the API app (created
    with docs_url=None)."""
    app.mount(f"{PREFIX}/static", StaticFiles(directory=HERE / "static"), name="console-static")
    app.include_router(routes.router)
    app.add_exception_handler(LoginNeeded, on_login_needed)
    app.add_exception_handler(Refused, on_refused)
    docs.mount(app)
