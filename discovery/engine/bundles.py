"""A request's bundle seen from the engine: what the data map tells the person in it, when it may be
handed out, and its expiry (deleted `archive.retention_days` after completion, audited).

The bundle package below builds and stores ZIPs knowing nothing of requests; this is where the two meet.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, cast

import sqlalchemy as sa
import structlog

from connectors.base import ConnectorError, EntityPolicy, Note
from connectors.retention import marketing_rules, render, rule_note, vendor_rule
from connectors.sql_map import parse_system
from connectors.vendor_settings import MODELS
from connectors.vendor_settings import parse as vendor_parse
from discovery.bundle.archive import ArchiveError, store_for_uri
from discovery.bundle.build import BundleView
from discovery.bundle.staging import safe_name
from discovery.engine.datamap import DataMap
from discovery.engine.ledger import AuditEvent, Request
from discovery.i18n.languages import SOURCE, language

if TYPE_CHECKING:
    from discovery.engine.runtime import Runtime

log = structlog.get_logger(__name__)


def bundle_view(data_map: DataMap, policies: Mapping[str, Mapping[str, EntityPolicy]], request_type: str,
                language_code: str = SOURCE) -> BundleView:
    """The data map's descriptions for index.html and the manifest, in the request's language (the manifest
    records the texts the person was given), and portability's field lists."""
    lang = language(language_code)
    systems: dict[str, dict[str, Any]] = {}
    portable: dict[str, dict[str, tuple[frozenset[str], list[str]]]] = {}
    for name, system in data_map.systems.items():
        about: dict[str, Any] = {key: [lang.text(v) for v in value] if isinstance(value, list) else lang.text(value)
                 for key, value in system.info.model_dump(exclude={"kind", "enabled"}).items()}
        about["categories"] = {e: list(p.categories) for e, p in policies.get(name, {}).items() if p.categories}
        about["retention_rules"] = _retention_rules(name, system.info.kind, system.settings, lang.gettext, lang.code)
        systems[name] = about
        if request_type != "portability" or system.info.kind != "sql":
            continue
        try:
            spec = parse_system(name, system.settings)
        except ConnectorError:  # the connector reported it when the export ran
            continue
        for entity, e in spec.entities.items():
            if e.portable is not None:
                portable.setdefault(name, {})[safe_name(entity)] = (
                    frozenset(e.portable), sorted(set(e.fields) - set(e.portable)))
    controller = {key: lang.text(value) for key, value in data_map.controller.model_dump().items()}
    return BundleView(controller=controller, systems=systems, portable=portable, language=lang.code)


def _retention_rules(name: str, kind: str, settings: Mapping[str, Any], gettext: Any, code: str) -> list[str]:
    """The system's retention rules (connectors.retention) as sentences in the request's language: a SQL system's
    entities' `retention:` keys, a vendor system's `retention_rules:` (as its connector states them)."""
    return [render(text, gettext, code) for text in declared_retention(name, kind, settings)]


def declared_retention(name: str, kind: str, settings: Mapping[str, Any]) -> list[Note]:
    """The rules a system's data-map entry declares, as the texts its connector states (no connection made).
    A declaration the connector would refuse yields nothing here: the connector reports it when it runs."""
    if kind == "sql":
        try:
            spec = parse_system(name, dict(settings))
        except ConnectorError:
            return []
        return [rule_note(entity, rule) for entity, rule in spec.retention_rules()]
    model = MODELS.get(kind)
    if model is None or "retention_rules" not in model.model_fields:
        return []
    try:
        parsed = vendor_parse(model, name, settings)
    except ConnectorError:
        return []
    # Matomo counts a visit's age from its last action (connectors/matomo.py), and says so
    start: Note | str = ""
    if kind == "matomo":  # imported here: the Matomo connector (and requests) only where a Matomo system is mapped
        from connectors.matomo import RETENTION_START as MATOMO_RETENTION_START

        start = Note(MATOMO_RETENTION_START)
    declared = [vendor_rule(name, spec, start).text for spec in getattr(parsed, "retention_rules", ())]
    if kind == "mautic":  # the marketing sweep's promises, as discovery.schedule.retention.rules adds them
        cfg: Any = parsed
        declared += [r.text for r in marketing_rules(name, cfg.newsletter_erasure_delay_days, cfg.trial_field,
                                                     cfg.trial_erasure_delay_days)]
    return declared


def bundle_unavailable(req: Request, now: datetime) -> str | None:
    """Why a request's bundle cannot be handed out (not made yet, expired, deleted), or None."""
    if not req.bundle_path:
        return f"request {req.id} has no bundle yet (status: {req.status})"
    if req.bundle_deleted_at is not None:
        return (f"the bundle of request {req.id} expired and was deleted on {req.bundle_deleted_at:%Y-%m-%d}; "
                "submit a new request for a fresh copy")
    if req.bundle_expires_at is not None and req.bundle_expires_at <= now:
        return (f"the bundle of request {req.id} expired on {req.bundle_expires_at:%Y-%m-%d}; "
                "submit a new request for a fresh copy")
    return None


@dataclass
class Expiry:
    request_id: str
    uri: str
    expired_at: str
    deleted: bool
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"request_id": self.request_id, "uri": self.uri, "expired_at": self.expired_at,
                "deleted": self.deleted, "error": self.error}


def expire_bundles(rt: Runtime, actor: str = "sweeper", limit: int = 500) -> list[Expiry]:
    """Delete bundles past their expiry from the store and record it (audited). Safe to run concurrently."""
    now = rt.clock()
    with rt.sessions() as s:
        due = list(s.execute(sa.select(Request.id, Request.bundle_path, Request.bundle_expires_at).where(
            Request.bundle_path.is_not(None), Request.bundle_deleted_at.is_(None),
            Request.bundle_expires_at.is_not(None), Request.bundle_expires_at <= now,
        ).order_by(Request.bundle_expires_at).limit(limit)))
    if not due:
        return []
    out: list[Expiry] = []
    for request_id, uri, expires_at in due:
        uri, expires_at = cast(str, uri), cast(datetime, expires_at)
        try:
            # first: the ledger never says deleted while the object remains
            store_for_uri(rt.settings, uri, rt.env).delete_uri(uri)
        except ArchiveError as exc:
            log.warning("bundle.expire_failed", request_id=request_id, error=str(exc))
            out.append(Expiry(request_id, uri, expires_at.isoformat(), False, str(exc)))
            continue
        with rt.sessions.begin() as s:
            won = s.execute(sa.update(Request).where(Request.id == request_id, Request.bundle_deleted_at.is_(None))
                            .values(bundle_deleted_at=now))
            if won.rowcount:  # type: ignore[attr-defined]
                req = s.get(Request, request_id)
                s.add(AuditEvent(event="bundle.expired", actor=actor, request_id=request_id,
                                 subject_hash=req.subject_hash if req else None,
                                 details={"uri": uri, "expires_at": expires_at.isoformat()}))
        out.append(Expiry(request_id, uri, expires_at.isoformat(), True))
    log.info("bundle.expired", count=sum(e.deleted for e in out), failed=sum(not e.deleted for e in out))
    return out
