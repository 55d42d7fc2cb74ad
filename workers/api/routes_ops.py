"""Operations routes: the health check (the ledger answers) and the readiness check (requests would move)."""

from typing import Any

import sqlalchemy as sa
from fastapi import APIRouter
from fastapi.responses import JSONResponse

from workers import heartbeat
from workers.api.deps import RT
from workers.api.errors import error_body

router = APIRouter()


@router.get("/healthz", tags=["operations"])
def healthz(rt: RT) -> dict[str, bool]:
    with rt.engine.connect() as conn:
        conn.execute(sa.text("SELECT 1"))
    return {"ok": True}


# Not in the OpenAPI document: a probe for the orchestrator whose normal "no" is a 503, not an API operation.
@router.get("/readyz", tags=["operations"], include_in_schema=False)
def readyz(rt: RT) -> JSONResponse:
    """200 when the ledger and the broker answer and a worker is alive; 503 with the reasons otherwise. With the
    embedded stub:// broker this process is its own worker, so only the ledger counts."""
    reasons: list[dict[str, Any]] = []
    try:
        with rt.engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except sa.exc.SQLAlchemyError:
        reasons.append({"check": "ledger", "message": "ledger database unreachable"})
    workers: dict[str, Any] | None = None
    try:
        found = heartbeat.liveness(rt.settings)
    except heartbeat.Unreachable as exc:  # the broker, or the Redis keeping the beats beside RabbitMQ
        reasons.append({"check": "broker", "message": str(exc)})
    else:
        if found is not None:
            workers = found.to_dict()
            if found.problem:
                reasons.append({"check": "workers", "message": found.problem})
    if reasons:
        return JSONResponse(error_body("not_ready", "; ".join(r["message"] for r in reasons), reasons),
                            status_code=503)
    return JSONResponse({"ok": True, "workers": workers})
