"""Retention without a request: the data map's promises (how long each kind of record is kept) kept by one mechanism.

Every connector states its rules (`Connector.retention_rules`, connectors.retention); each names who keeps it:
- `retention run`: this module, through the connector's `retention_due` / `retention_apply` (SQL entities with a
  `retention:` key; vendor connectors that implement them);
- `sweep-inactive`: a `then: notice` rule, handed to discovery.schedule.inactivity (told first, erased later);
- `sweep-marketing`: Mautic's newsletter and trial data, discovery.schedule.marketing;
- `hold ends`: a legal hold an erasure applied; the scheduler erases those rows the day after it ends;
- a vendor setting dsar cannot read, confirmed by hand (`dsar retention confirm`).

`run` does the first three in one pass (the sweeps' commands keep working on their own), in batches of bounded
size: each batch commits whole, and the run's progress (a cursor per rule) is written to the ledger after it, so
an interrupted run resumes where it stopped and changes nothing twice. One run at a time: a run row with a fresh
heartbeat is the lock; one whose heartbeat is older than STALE is taken over (resumed). Records of a person with
an open request, and records under a legal hold that has not ended, are left alone and counted.

Nothing here stores or logs personal data: runs keep counts per entity; open requests' identities stay in memory.
"""

from __future__ import annotations

import csv
import html
import io
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
import structlog
from sqlalchemy.orm import Mapped, Session, mapped_column

from connectors.base import (
    N_,
    ConnectorError,
    Identities,
    Identity,
    IdentityType,
    Note,
    Receipt,
    UnsupportedAction,
    note,
)
from connectors.mautic import MauticConnector
from connectors.retention import (
    MECHANISM_CONFIRM,
    MECHANISM_HOLD_END,
    MECHANISM_INACTIVITY,
    MECHANISM_MARKETING,
    MECHANISM_RUN,
    Keep,
    Period,
    RetentionRule,
    cutoff_moment,
    marketing_rules,
    render,
)
from connectors.sql import SqlConnector
from discovery.engine import pipeline
from discovery.engine.ledger import (
    OPEN_STATUSES,
    AuditEvent,
    Base,
    Request,
    RequestStatus,
    RequestType,
    ScheduledAction,
    SubjectIdentity,
)
from discovery.engine.runtime import Runtime
from discovery.schedule import inactivity, marketing, scheduler

log = structlog.get_logger(__name__)

BATCH = 1000  # keys per transaction: short locks, bounded memory, at most one batch redone after a crash
STALE = timedelta(minutes=10)  # a run whose heartbeat is older was interrupted: the next run takes it over
CONFIRM_EVERY = timedelta(days=365)  # a vendor setting confirmed by hand longer ago is overdue
RUNNING, DONE, FAILED = "running", "done", "failed"
_LOCK = 74_017_019  # PostgreSQL advisory lock id: starting or taking over a run is one step


class RetentionRun(Base):
    """One `dsar retention run`: when, who, the moment its cut-offs are computed from (kept when resumed), and
    per rule its cursor and counts (its receipt: numbers per entity, no personal data)."""

    __tablename__ = "retention_runs"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    started_at: Mapped[datetime]
    as_of: Mapped[datetime]
    heartbeat_at: Mapped[datetime]
    finished_at: Mapped[datetime | None]
    status: Mapped[str] = mapped_column(sa.String(16), index=True)
    worker: Mapped[str] = mapped_column(sa.String(128))
    actor: Mapped[str] = mapped_column(sa.String(128))
    scope: Mapped[str | None] = mapped_column(sa.String(64))  # one system, or None: all
    progress: Mapped[dict[str, Any]] = mapped_column(default=dict)
    error: Mapped[str | None] = mapped_column(sa.Text)


class RetentionConfirmation(Base):
    """A person confirmed a vendor's retention setting by hand (`dsar retention confirm`)."""

    __tablename__ = "retention_confirmations"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    system: Mapped[str] = mapped_column(sa.String(64), index=True)
    entity: Mapped[str | None] = mapped_column(sa.String(128))
    note: Mapped[str] = mapped_column(sa.Text)
    confirmed_by: Mapped[str] = mapped_column(sa.String(128))
    confirmed_at: Mapped[datetime]


class RetentionBusy(pipeline.InvalidInput):
    """Another retention run is in progress."""


# -- the rules ---------------------------------------------------------------------------------------

def rules(rt: Runtime, system: str | None = None) -> list[RetentionRule]:
    """Every rule of the enabled systems (or of `system`), in the data map's order."""
    conns = rt.connectors()
    if system is not None and system not in conns:
        raise pipeline.NotFoundError(f"unknown system '{system}' (enabled: {', '.join(sorted(conns)) or 'none'})")
    out: list[RetentionRule] = []
    for name, conn in conns.items():
        if system is not None and name != system:
            continue
        declared = conn.retention_rules()
        if isinstance(conn, MauticConnector) and not any(r.mechanism == MECHANISM_MARKETING for r in declared):
            declared += _marketing_rules(name, conn)
        if isinstance(conn, SqlConnector) and conn.spec.inactivity is not None \
                and not any(r.mechanism == MECHANISM_INACTIVITY for r in declared):
            declared.append(_inactivity_rule(rt, name, conn))
        out += declared
    return out


def _inactivity_rule(rt: Runtime, name: str, conn: SqlConnector) -> RetentionRule:
    """An `inactivity` entity without a `then: notice` rule keeps the settings' promise (schedule.inactivity_months):
    stated as a rule so that one run and one report cover it."""
    assert conn.spec.inactivity is not None
    spec = conn.spec.inactivity
    period = Period(rt.settings.schedule.inactivity_months, "months")
    start = spec.last_activity + (f" ({spec.fallback})" if spec.fallback else "")
    return RetentionRule(system=name, entity=spec.entity, mechanism=MECHANISM_INACTIVITY, period=period,
                         from_field=spec.last_activity, then="notice", unless=("open_request",),
                         text=note(N_("{what}: erased {period} after the last activity ({start}), after a notice"),
                                   what=spec.entity, period=period.note(), start=start))


def _marketing_rules(name: str, conn: MauticConnector) -> list[RetentionRule]:
    """Mautic's two promises, kept by the marketing sweep (until the Mautic connector states them itself)."""
    cfg = conn.config
    return marketing_rules(name, cfg.newsletter_erasure_delay_days, cfg.trial_field, cfg.trial_erasure_delay_days)


def open_requests_keep(rt: Runtime) -> Keep:
    """The identities of every open request's subject (e-mail and what discovery learned): their records stay
    until the request is done; and of everyone whose processing is restricted (Art. 18: their latest completed
    restriction or lift request is a restriction): their records stay until it is lifted. Held in memory for the
    run only."""
    with rt.sessions() as s:
        open_ids = sa.select(Request.id).where(Request.status.in_([str(x) for x in OPEN_STATUSES]))
        identities = _identities(s, open_ids)
        # per subject, the latest completed restriction or lift; a restriction last: restricted
        done = [str(RequestStatus.COMPLETED), str(RequestStatus.COMPLETED_WITH_ERRORS)]
        kinds = [str(RequestType.RESTRICTION), str(RequestType.LIFT_RESTRICTION)]
        latest: dict[str, tuple[datetime, str, str]] = {}
        for id_, subject, type_, at in s.execute(
                sa.select(Request.id, Request.subject_hash, Request.type, Request.completed_at)
                .where(Request.type.in_(kinds), Request.status.in_(done))):
            when = at or datetime.min.replace(tzinfo=UTC)
            if subject not in latest or when >= latest[subject][0]:
                latest[subject] = (when, type_, id_)
        restricted_ids = [i for _, t, i in latest.values() if t == RequestType.RESTRICTION]
        restricted = _identities(s, restricted_ids) if restricted_ids else Identities()
    return Keep(identities=identities, restricted=restricted)


def _keep_for(conn: Any, keep: Keep) -> Keep:
    """A vendor connector knows open requests only: a restricted person's records are kept as if the request were
    open (counted as such); the SQL connector counts them apart."""
    if isinstance(conn, SqlConnector) or keep.restricted is None or not len(keep.restricted):
        return keep
    merged = Identities()
    for identity in [*(keep.identities or ()), *keep.restricted]:
        merged.add(identity)
    return Keep(identities=merged, holds=keep.holds, requests=keep.requests)


def _identities(s: Session, request_ids: Any) -> Identities:
    """The subjects' e-mail addresses and what discovery learned about them, for these requests."""
    identities = Identities()
    ids = request_ids if isinstance(request_ids, sa.Select) else list(request_ids)
    for email in s.scalars(sa.select(Request.subject_email).where(Request.id.in_(ids))):
        identities.add(Identity(IdentityType.EMAIL, email))
    for type_, value in s.execute(sa.select(SubjectIdentity.type, SubjectIdentity.value)
                                  .where(SubjectIdentity.request_id.in_(ids))):
        if type_ in {t.value for t in IdentityType} and value:
            identities.add(Identity(IdentityType(type_), value))
    return identities


# -- plan ---------------------------------------------------------------------------------------------

def plan(rt: Runtime, system: str | None = None, now: datetime | None = None) -> list[dict[str, Any]]:
    """Per rule: how many records are past retention today, kept (hold, open request), undated, the oldest one's
    age, and what would be done. Changes nothing."""
    now = now or rt.clock()
    keep = open_requests_keep(rt)
    out = []
    for rule in rules(rt, system):
        row = {"rule": rule_key(rule), **rule.to_dict(), "action": _action(rule)}
        if rule.mechanism in (MECHANISM_RUN, MECHANISM_INACTIVITY):
            try:
                conn = rt.connector(rule.system)
                row.update(conn.retention_due(rule, now, _keep_for(conn, keep)).to_dict(now))
            except ConnectorError as exc:
                row["error"] = exc.message
        out.append(row)
    return out


def _action(rule: RetentionRule) -> str:
    if rule.mechanism == MECHANISM_RUN:
        return {"erase": "erase", "anonymise": "anonymise"}.get(rule.then, rule.then)
    if rule.mechanism == MECHANISM_INACTIVITY:
        return "notify, then erase (sweep-inactive)"
    return rule.mechanism


# -- run ----------------------------------------------------------------------------------------------

@dataclass
class RunResult:
    run_id: int
    as_of: datetime
    resumed: bool = False
    rules: dict[str, dict[str, Any]] = field(default_factory=dict)  # rule key -> counts
    errors: list[str] = field(default_factory=list)

    @property
    def changed(self) -> int:
        return sum(sum(r.get("changed", {}).values()) for r in self.rules.values())

    def to_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "as_of": self.as_of.isoformat(), "resumed": self.resumed,
                "rules": self.rules, "changed": self.changed, "errors": self.errors}


Progress = Callable[[str, dict[str, Any]], None]


def run(rt: Runtime, system: str | None = None, *, batch: int = BATCH, actor: str = "retention",
        worker: str | None = None, progress: Progress | None = None) -> RunResult:
    """Carry out every rule (of `system`), resuming an interrupted run first; see the module's docstring."""
    selected = rules(rt, system)  # an unknown system fails here, before any run row is written
    worker = worker or scheduler.worker_name()
    run_id, as_of, state, resumed = _start(rt, system, actor, worker)
    result = RunResult(run_id=run_id, as_of=as_of, resumed=resumed)
    keep = open_requests_keep(rt)
    try:
        for rule in selected:
            key = rule_key(rule)
            entry = state.setdefault(key, {"mechanism": rule.mechanism, "changed": {}, "skipped": {}})
            if entry.get("done"):
                result.rules[key] = entry
                continue
            try:
                _run_rule(rt, run_id, rule, key, entry, as_of, keep, batch, progress)
            except ConnectorError as exc:
                entry["error"] = exc.message
                result.errors.append(f"{key}: {exc.message}")
            result.rules[key] = entry
            _save(rt, run_id, key, entry)
    except BaseException as exc:
        _finish(rt, run_id, FAILED, actor, result, f"{type(exc).__name__}")
        raise
    _finish(rt, run_id, FAILED if result.errors else DONE, actor, result, "; ".join(result.errors)[:2000] or None)
    return result


def rule_key(rule: RetentionRule) -> str:
    return f"{rule.system}.{rule.entity}" if rule.mechanism in (MECHANISM_RUN, MECHANISM_INACTIVITY) \
        else f"{rule.system}.{rule.entity} ({rule.mechanism})"


def _run_rule(rt: Runtime, run_id: int, rule: RetentionRule, key: str, entry: dict[str, Any], as_of: datetime,
              keep: Keep, batch: int, progress: Progress | None) -> None:
    if rule.mechanism == MECHANISM_RUN:
        conn = rt.connector(rule.system)

        def checkpoint(cursor: Any, receipt: Receipt) -> None:
            entry["cursor"] = cursor
            entry["changed"] = _merged(entry.get("base_changed", {}), receipt.changed)
            _save(rt, run_id, key, entry)
            if progress:
                progress(key, entry)

        # a resumed rule adds to what its earlier attempt changed
        entry["base_changed"] = dict(entry.get("changed") or {})
        receipt = conn.retention_apply(rule, as_of, _keep_for(conn, keep), batch=batch, cursor=entry.get("cursor"),
                                       checkpoint=checkpoint)
        entry["changed"] = _merged(entry.pop("base_changed"), receipt.changed)
        entry["skipped"] = receipt.skipped
        entry["done"] = True
    elif rule.mechanism == MECHANISM_INACTIVITY:
        assert rule.period is not None
        months = rule.period.count * (12 if rule.period.unit == "years" else 1)
        swept = inactivity.sweep_inactive(rt, actor="retention", months=months, systems=[rule.system],
                                          cutoff=cutoff_moment(rule.period, as_of))
        entry["changed"] = {"notified": swept.notified}
        entry["skipped"] = {"already notified, erasure pending": swept.already_scheduled,
                            "notice not sent (next run retries)": swept.failed}
        entry["done"] = True
        if swept.failed:
            raise UnsupportedAction(rule.system, f"{swept.failed} notice(s) not sent: " + "; ".join(swept.errors)[:300])
    elif rule.mechanism == MECHANISM_MARKETING:
        if not entry.get("swept"):
            swept_m = marketing.sweep_marketing(rt, actor="retention", systems=[rule.system])
            entry["changed"] = {"scheduled": swept_m.scheduled}
            entry["skipped"] = {"already scheduled": swept_m.already_scheduled}
            entry["swept"] = True
        entry["done"] = True
    else:  # hold ends run with the scheduler; settings confirmed by hand are not run
        entry["done"] = True
    if progress:
        progress(key, entry)


def _merged(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
    return {k: a.get(k, 0) + b.get(k, 0) for k in {*a, *b}}


def _start(rt: Runtime, system: str | None, actor: str, worker: str) -> tuple[int, datetime, dict[str, Any], bool]:
    """Take the lock: resume an unfinished run of the same scope whose heartbeat is stale (or that failed), refuse
    while one is alive, else start a new run. (run id, as_of, progress, resumed)."""
    now = rt.clock()
    with rt.sessions.begin() as s:
        _lock(s)
        alive = s.scalars(sa.select(RetentionRun).where(RetentionRun.status == RUNNING,
                                                        RetentionRun.heartbeat_at > now - STALE)).first()
        if alive is not None:
            raise RetentionBusy(f"retention run #{alive.id} is in progress ({alive.worker}, last seen "
                                f"{alive.heartbeat_at:%Y-%m-%d %H:%M} UTC)")
        unfinished = s.scalars(sa.select(RetentionRun).where(
            RetentionRun.status.in_((RUNNING, FAILED)), RetentionRun.finished_at.is_(None),
            RetentionRun.scope.is_(None) if system is None else RetentionRun.scope == system)
            .order_by(RetentionRun.id.desc())).first()
        if unfinished is not None:
            unfinished.status, unfinished.worker, unfinished.heartbeat_at, unfinished.error = RUNNING, worker, now, None
            s.add(AuditEvent(event="retention.resumed", actor=actor, details={"run_id": unfinished.id}))
            return unfinished.id, unfinished.as_of, dict(unfinished.progress or {}), True
        # Superseded: a failed run of another scope is not resumed by this one; it stays as it is, for the report.
        row = RetentionRun(started_at=now, as_of=now, heartbeat_at=now, status=RUNNING, worker=worker, actor=actor,
                           scope=system, progress={})
        s.add(row)
        s.flush()
        s.add(AuditEvent(event="retention.started", actor=actor, details={"run_id": row.id, "scope": system}))
        return row.id, now, {}, False


def _lock(s: Session) -> None:
    if s.get_bind().dialect.name == "postgresql":
        s.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _LOCK})


def _save(rt: Runtime, run_id: int, key: str, entry: dict[str, Any]) -> None:
    """The rule's cursor and counts, and the heartbeat, after each committed batch."""
    with rt.sessions.begin() as s:
        row = s.get(RetentionRun, run_id, with_for_update=True)
        if row is None:
            return
        row.progress = {**(row.progress or {}), key: {k: v for k, v in entry.items() if k != "base_changed"}}
        row.heartbeat_at = rt.clock()


def _finish(rt: Runtime, run_id: int, status: str, actor: str, result: RunResult, error: str | None) -> None:
    now = rt.clock()
    with rt.sessions.begin() as s:
        row = s.get(RetentionRun, run_id, with_for_update=True)
        if row is None:
            return
        row.status, row.heartbeat_at, row.error = status, now, error
        if status == DONE:
            row.finished_at = now
        counts = {k: {"changed": v.get("changed", {}), "skipped": v.get("skipped", {})}
                  for k, v in result.rules.items()}
        s.add(AuditEvent(event=f"retention.{'done' if status == DONE else 'failed'}", actor=actor,
                         details={"run_id": run_id, "as_of": result.as_of.isoformat(), "rules": counts,
                                  **({"error": error} if error else {})}))
    log.info("retention.run", run_id=run_id, status=status, changed=result.changed)


# -- confirm (vendor settings checked by hand) ------------------------------------------------------

def confirm(rt: Runtime, system: str, note_text: str, actor: str, entity: str | None = None) -> RetentionConfirmation:
    """Record that a person checked a system's retention setting (audited)."""
    if system not in rt.data_map.systems:
        raise pipeline.NotFoundError(f"unknown system '{system}' (in the data map: "
                                     f"{', '.join(sorted(rt.data_map.systems))})")
    text = " ".join(note_text.split())
    if len(text) < 3:
        raise pipeline.InvalidInput("--note must say what was checked (3 characters at least)")
    with rt.sessions.begin() as s:
        row = RetentionConfirmation(system=system, entity=entity, note=text[:2000], confirmed_by=actor,
                                    confirmed_at=rt.clock())
        s.add(row)
        s.flush()
        s.add(AuditEvent(event="retention.confirmed", actor=actor,
                         details={"system": system, "entity": entity, "confirmation_id": row.id}))
    return row


# -- report -------------------------------------------------------------------------------------------

def report(rt: Runtime, now: datetime | None = None) -> dict[str, Any]:
    """Every promise of the data map, its mechanism, the last run, what it removed and kept (and why), and what
    is overdue (records past retention by more than a day, a vendor setting unconfirmed for a year, scheduled
    erasures past due)."""
    now = now or rt.clock()
    keep = open_requests_keep(rt)
    with rt.sessions() as s:
        runs = list(s.scalars(sa.select(RetentionRun).order_by(RetentionRun.id.desc()).limit(50)))
        confirmations = list(s.scalars(sa.select(RetentionConfirmation).order_by(RetentionConfirmation.id.desc())))
        scheduled = s.execute(sa.select(ScheduledAction.kind, ScheduledAction.status, ScheduledAction.due_at)
                              .where(ScheduledAction.status.in_((scheduler.SCHEDULED, scheduler.FAILED)))).all()
    last_done = next((r for r in runs if r.status == DONE), None)
    rows: list[dict[str, Any]] = []
    covered: set[str] = set()
    for rule in rules(rt):
        covered.add(rule.system)
        key = rule_key(rule)
        row: dict[str, Any] = {"rule": key, **rule.to_dict(), "texts": _texts(rule.text), "overdue": False}
        last = next((r for r in runs if key in (r.progress or {})), None)
        if last is not None:
            entry = last.progress[key]
            row["last_run"] = {"run_id": last.id, "status": last.status, "at": last.started_at.isoformat(),
                               "changed": entry.get("changed", {}), "kept": entry.get("skipped", {}),
                               "error": entry.get("error")}
        if rule.mechanism in (MECHANISM_RUN, MECHANISM_INACTIVITY):
            try:
                conn = rt.connector(rule.system)
                row["now"] = conn.retention_due(rule, now, _keep_for(conn, keep)).to_dict(now)
                late = conn.retention_due(rule, now - timedelta(days=1), _keep_for(conn, keep))
                row["overdue"] = late.due > 0
                row["overdue_records"] = late.due
            except ConnectorError as exc:
                row["error"], row["overdue"] = exc.message, True
        elif rule.mechanism in (MECHANISM_HOLD_END, MECHANISM_MARKETING) or rule.confirm_by_hand:
            kinds = {MECHANISM_HOLD_END: (scheduler.KIND_HOLD_END,),
                     MECHANISM_MARKETING: (scheduler.KIND_NEWSLETTER, scheduler.KIND_TRIAL)}.get(rule.mechanism, ())
            late_actions = sum(1 for k, st, due in scheduled if k in kinds and (st == scheduler.FAILED or
                                                                                 due < now - timedelta(days=1)))
            if kinds:
                row["scheduled_overdue"] = late_actions
                row["overdue"] = late_actions > 0
        if rule.confirm_by_hand or rule.mechanism == MECHANISM_CONFIRM:
            found = next((c for c in confirmations if c.system == rule.system and c.entity in (None, rule.entity)),
                         None)
            row["confirmed"] = {"at": found.confirmed_at.isoformat(), "by": found.confirmed_by,
                                "note": found.note} if found else None
            row["overdue"] = found is None or found.confirmed_at < now - CONFIRM_EVERY
        rows.append(row)
    # systems whose connector declares no rule: the data map states a retention nobody enforces here
    for name, system in rt.data_map.systems.items():
        if name in covered or not system.info.enabled:
            continue
        stated = system.info.retention
        found = next((c for c in confirmations if c.system == name), None)
        rows.append({"rule": f"{name} (stated)", "system": name, "entity": None, "mechanism": "none declared",
                     "texts": _stated(stated), "text": _stated(stated).get("en", ""),
                     "confirmed": {"at": found.confirmed_at.isoformat(), "by": found.confirmed_by,
                                   "note": found.note} if found else None,
                     "overdue": found is None or found.confirmed_at < now - CONFIRM_EVERY})
    return {"generated_at": now.isoformat(), "rules": rows,
            "last_run": _run_dict(last_done) if last_done else None,
            "runs": [_run_dict(r) for r in runs[:10]],
            "confirmations": [{"system": c.system, "entity": c.entity, "at": c.confirmed_at.isoformat(),
                               "by": c.confirmed_by, "note": c.note} for c in confirmations[:50]],
            "overdue": sum(1 for r in rows if r.get("overdue"))}


def _run_dict(r: RetentionRun) -> dict[str, Any]:
    return {"run_id": r.id, "status": r.status, "started_at": r.started_at.isoformat(), "as_of": r.as_of.isoformat(),
            "finished_at": r.finished_at.isoformat() if r.finished_at else None, "actor": r.actor, "scope": r.scope,
            "error": r.error}


def _texts(text: Note) -> dict[str, str]:
    from discovery.i18n.languages import LANGUAGES, language

    return {code: render(text, language(code).gettext, code) for code in LANGUAGES}


def _stated(value: Any) -> dict[str, str]:
    from discovery.i18n.languages import LANGUAGES, language

    return {code: language(code).text(value) for code in LANGUAGES}


CSV_COLUMNS = ("rule", "system", "entity", "mechanism", "period", "from", "then", "unless", "due_now", "kept_hold",
               "kept_request", "kept_restricted", "undated", "oldest_age_days", "overdue", "last_run_at",
               "last_run_status", "last_run_changed", "last_run_kept", "confirmed_at", "text")


def report_csv(data: dict[str, Any]) -> str:
    out = io.StringIO()
    w = csv.writer(out)
    w.writerow(CSV_COLUMNS)
    for r in data["rules"]:
        now = r.get("now") or {}
        last = r.get("last_run") or {}
        w.writerow([_cell(v) for v in (
            r["rule"], r["system"], r.get("entity") or "", r["mechanism"], r.get("period") or "", r.get("from") or "",
            r.get("then") or "", " ".join(r.get("unless") or []), now.get("due", ""), now.get("kept_hold", ""),
            now.get("kept_request", ""), now.get("kept_restricted", ""), now.get("undated", ""),
            now.get("oldest_age_days", ""),
            "yes" if r.get("overdue") else "no", last.get("at", ""), last.get("status", ""),
            counts_text(last.get("changed")), counts_text(last.get("kept")), (r.get("confirmed") or {}).get("at", ""),
            r.get("text", ""))])
    return out.getvalue()


def counts_text(value: Any) -> str:
    if not value:
        return ""
    parts = []
    for k, v in sorted(value.items()):
        parts.append(f"{k}: {counts_text(v) if isinstance(v, dict) else v}")
    return "; ".join(parts)


def _cell(value: Any) -> Any:
    """Spreadsheet formula injection neutralised, as the bundle's CSV does."""
    text = str(value)
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else value


def report_html(data: dict[str, Any]) -> str:
    e = html.escape
    head = ("<tr><th>Rule</th><th>Mechanism</th><th>Promise</th><th>Due now</th>"
            "<th>Kept (hold / open request / restricted)</th><th>Oldest (days)</th><th>Last run</th>"
            "<th>Removed</th><th>Kept, why</th><th>Overdue</th></tr>")
    rows = []
    for r in data["rules"]:
        now = r.get("now") or {}
        last = r.get("last_run") or {}
        confirmed = r.get("confirmed")
        when = f"{last.get('at', '')[:10]} ({last.get('status', '')})" if last else ""
        if confirmed:
            when += f" confirmed {confirmed['at'][:10]} by {confirmed['by']}: {confirmed['note']}"
        rows.append("<tr>" + "".join(f"<td>{e(str(v))}</td>" for v in (
            r["rule"], r["mechanism"], r.get("text", ""), now.get("due", ""),
            f"{now.get('kept_hold', '')} / {now.get('kept_request', '')} / {now.get('kept_restricted', '')}"
            if now else "",
            now.get("oldest_age_days") if now.get("oldest_age_days") is not None else "", when,
            counts_text(last.get("changed")), counts_text(last.get("kept")),
            "yes" if r.get("overdue") else "no")) + "</tr>")
    last_run = data.get("last_run") or {}
    return ("<!doctype html><html><head><meta charset=\"utf-8\"><title>Retention report</title></head><body>"
            f"<h1>Retention report</h1><p>Generated {e(data['generated_at'])}. Last complete run: "
            f"{e(str(last_run.get('started_at', 'never')))}. Overdue: {e(str(data['overdue']))}.</p>"
            f"<table>{head}{''.join(rows)}</table></body></html>")
