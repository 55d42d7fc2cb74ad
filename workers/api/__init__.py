"""The HTTP API (`dsar serve`): intake, status, deadlines, downloads, ticket webhooks, account events.

FastAPI on uvicorn; the OpenAPI document is served at /openapi.json. Endpoints are thin: the
domain lives in discovery/ (pipeline, api_tokens, download_tokens, tickets, deadlines). Every
error is JSON of one shape: {"error": {"code": "...", "message": "...", "details": [...]?}}.

This module assembles the app (`create_app`). The package: `schemas` (request and response models),
`errors` (the error shape, exception handlers, the ASGI guard), `deps` (runtime, wake-ups, token auth),
`views` (shared loading and response bodies), and one router per family: `routes_ops`, `routes_metrics`,
`routes_requests`, `routes_downloads`, `routes_webhooks`; the console (workers/console: /ui and /docs) mounts
itself. Routes import the rest; nothing imports the routes but this module.
"""

from collections.abc import AsyncIterator
from contextlib import ExitStack, asynccontextmanager

from fastapi import FastAPI

from discovery.engine import pipeline
from discovery.engine.runtime import Runtime
from workers import console
from workers.api import routes_downloads, routes_metrics, routes_ops, routes_requests, routes_webhooks
from workers.api.deps import SafeWakeups, Verified
from workers.api.errors import HANDLERS, Guard

__all__ = ["create_app"]

# Include order is the order of the paths in the OpenAPI document.
_ROUTERS = (routes_ops.router, routes_metrics.router, routes_requests.router, routes_downloads.router,
            routes_webhooks.router)


def create_app(rt: Runtime | None = None, wake: pipeline.Wakeups | None = None) -> FastAPI:
    """The ASGI app. Without arguments (uvicorn's factory) it wires this process from the settings."""
    own = rt is None
    if rt is None:
        from workers import app as process

        rt = process.runtime()  # settings, broker, ledger schema: fail at start, not on the first call
    if wake is None:
        from workers.actors import WAKE

        wake = WAKE
    runtime = rt

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        with ExitStack() as stack:
            if own:
                from workers import app as process
                from workers.inprocess import in_process_worker_if_embedded

                stack.enter_context(in_process_worker_if_embedded(process.is_embedded()))
            yield
        if own:
            runtime.close()

    api = FastAPI(title="dsar", version="1", lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Answer GDPR data-subject requests: intake, status, deadlines, downloads, webhooks. "
                              'Every error is {"error": {"code", "message", "details"?}}.')
    api.state.rt, api.state.wake, api.state.verified = rt, SafeWakeups(wake), Verified()
    api.add_middleware(Guard)
    for exc_type, handler in HANDLERS.items():
        api.add_exception_handler(exc_type, handler)
    for router in _ROUTERS:
        api.include_router(router)
    console.mount(api)  # /ui, and /docs with its assets served from here (no CDN)
    return api
