"""The API's one error shape, the exception handlers that produce it, and the ASGI guard around the app.

Every error is JSON: {"error": {"code": "...", "message": "...", "details": [...]?}}. Routes raise `ApiError`
(via `fail`) or a domain exception that `HANDLERS` maps to a status; `Guard` turns anything else into a 500.
"""

import time
from collections.abc import Callable
from typing import Any, NoReturn

import orjson
import structlog
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DataError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from connectors.emails import InvalidEmail
from discovery.engine import pipeline
from discovery.engine.callbacks import CallbackRefused
from discovery.engine.db import LedgerUnavailable
from discovery.intake import tickets

log = structlog.get_logger(__name__)


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, details: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.details = status, code, message, details


def fail(status: int, code: str, message: str) -> NoReturn:
    raise ApiError(status, code, message)


def error_body(code: str, message: str, details: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message}
    if details:
        error["details"] = details
    return {"error": error}


def validation_details(errors: Any) -> list[dict[str, Any]]:
    # The input itself is never echoed: it may be an e-mail.
    return [{"loc": [str(p) for p in e.get("loc", ())], "message": str(e.get("msg", ""))} for e in errors]


def _reply(status: int, code: str, message: str, details: list[dict[str, Any]] | None = None,
           headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_body(code, message, details), status_code=status, headers=headers)


async def _on_api_error(_r: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return _reply(exc.status, exc.code, exc.message, exc.details)


async def _on_invalid(_r: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return _reply(422, "validation_error", "the request is not valid", validation_details(exc.errors()))


async def _on_http(_r: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return _reply(exc.status_code, code, str(exc.detail), headers=getattr(exc, "headers", None))


async def _on_not_found(_r: Request, exc: Exception) -> JSONResponse:
    return _reply(404, "not_found", str(exc))


async def _on_bad_input(_r: Request, exc: Exception) -> JSONResponse:
    return _reply(422, "invalid_input", str(exc))


async def _on_callback(_r: Request, exc: Exception) -> JSONResponse:
    return _reply(422, "callback_refused", str(exc))


async def _on_ticket_conflict(_r: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, pipeline.TicketConflict)
    return _reply(409, "ticket_conflict", str(exc), [{"request_id": exc.request_id, "type": exc.request_type}])


async def _on_state(_r: Request, exc: Exception) -> JSONResponse:
    return _reply(409, "state_conflict", str(exc))


async def _on_data(_r: Request, _exc: Exception) -> JSONResponse:
    return _reply(422, "invalid_input", "a value is not acceptable to the ledger")


async def _on_down(_r: Request, _exc: Exception) -> JSONResponse:
    return _reply(503, "unavailable", "the ledger database is unreachable; retry later", headers={"Retry-After": "5"})


HANDLERS: dict[type[Exception], Callable[[Request, Exception], Any]] = {
    ApiError: _on_api_error, RequestValidationError: _on_invalid, StarletteHTTPException: _on_http,
    pipeline.NotFoundError: _on_not_found, InvalidEmail: _on_bad_input, pipeline.InvalidInput: _on_bad_input,
    tickets.TicketError: _on_bad_input, CallbackRefused: _on_callback, pipeline.TicketConflict: _on_ticket_conflict,
    pipeline.StateConflict: _on_state, DataError: _on_data, OperationalError: _on_down, LedgerUnavailable: _on_down,
}


class Guard:
    """Catches what escapes the routes: a JSON 500 (no traceback, no personal data) and one log line per call."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, status, response_started = time.perf_counter(), 500, False

        async def send_wrapper(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                status, response_started = message["status"], True
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except Exception:
            log.exception("api.crash", method=scope["method"], path=scope["path"])
            if response_started:
                raise
            body = orjson.dumps(error_body("internal", "internal error; the server log has the details"))
            await send({"type": "http.response.start", "status": 500,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})
        finally:  # the path only: query strings carry download tokens
            log.info("api.request", method=scope["method"], path=scope["path"], status=status,
                     ms=round((time.perf_counter() - started) * 1000, 1))
