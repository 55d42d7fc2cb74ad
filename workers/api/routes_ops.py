"""Operations routes: the health check (the ledger answers)."""

import sqlalchemy as sa
from fastapi import APIRouter

from workers.api.deps import RT

router = APIRouter()


@router.get("/healthz", tags=["operations"])
def healthz(rt: RT) -> dict[str, bool]:
    with rt.engine.connect() as conn:
        conn.execute(sa.text("SELECT 1"))
    return {"ok": True}
