"""The inactivity rule: an account inactive for `schedule.inactivity_months` is erased, after the person was told.

`sweep_inactive` asks every SQL system whose data map names an `inactivity` entity and column for
the people whose last activity is older than the cut-off, sends each a notice (discovery.intake.notify),
and only then schedules an `inactivity_erasure` `schedule.notice_days` later. When it falls due the
scheduler checks the last activity again: someone who logged in since is not erased.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
import structlog

from connectors.sql import SqlConnector
from discovery.engine.ledger import ScheduledAction
from discovery.engine.runtime import Runtime
from discovery.i18n.languages import language
from discovery.intake.notify import Notice, Notifier, NotifyError, inactivity_notice, make_notifier
from discovery.schedule import scheduler

log = structlog.get_logger(__name__)


@dataclass
class SweepResult:
    cutoff: datetime
    due_at: datetime
    systems: list[str] = field(default_factory=list)
    inactive: int = 0  # people found inactive
    notified: int = 0  # told now, erasure scheduled
    already_scheduled: int = 0  # told in an earlier sweep; the erasure is still pending
    failed: int = 0  # the notice could not be sent: nothing scheduled, the next sweep tries again
    errors: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"cutoff": self.cutoff.isoformat(), "erasure_due_at": self.due_at.isoformat(), "systems": self.systems,
                "inactive": self.inactive, "notified": self.notified, "already_scheduled": self.already_scheduled,
                "failed": self.failed, "errors": self.errors}


def months_before(moment: datetime, months: int) -> datetime:
    month = moment.month - 1 - months
    year, month = moment.year + month // 12, month % 12 + 1
    for day in (moment.day, 30, 29, 28):  # the last day of a shorter month
        try:
            return moment.replace(year=year, month=month, day=day)
        except ValueError:
            continue
    raise AssertionError("unreachable")


def sweep_inactive(rt: Runtime, notifier: Notifier | None = None, actor: str = "inactivity-sweep",
                   progress: Callable[[SweepResult], None] | None = None, months: int | None = None,
                   systems: list[str] | None = None, cutoff: datetime | None = None) -> SweepResult:
    """`months`: the inactivity period (default schedule.inactivity_months; a retention rule `then: notice` gives
    its own); `systems`: only these (default every SQL system naming an inactivity entity); `cutoff`: last activity
    before it is inactive (default `months` before now; `dsar retention run` gives the rule's day boundary)."""
    cfg = rt.settings.schedule
    now = rt.clock()
    months = cfg.inactivity_months if months is None else months
    result = SweepResult(cutoff=cutoff or months_before(now, months), due_at=now + timedelta(days=cfg.notice_days))
    notifier = notifier or make_notifier(cfg, rt.data_map.controller.contact, rt.env)
    for name, conn in rt.connectors().items():
        if not isinstance(conn, SqlConnector) or conn.spec.inactivity is None:
            continue
        if systems is not None and name not in systems:
            continue
        result.systems.append(name)
        for email, last in conn.inactive_subjects(result.cutoff):
            result.inactive += 1
            if _pending(rt, email):
                result.already_scheduled += 1
                continue
            try:
                ref = notifier.send(_notice(rt, email, last, result.due_at, months))
            except NotifyError as exc:
                result.failed += 1
                if str(exc) not in result.errors:
                    result.errors.append(str(exc))
                continue
            # Scheduled only once the notice is out: an unsent notice never leads to an erasure.
            scheduler.schedule(
                rt, scheduler.KIND_INACTIVITY, email, result.due_at,
                f"inactive since {(last or result.cutoff):%Y-%m-%d} (over {months} months); "
                f"told on {now:%Y-%m-%d}, erased unless active again", actor,
                details={"system": name, "last_activity": last.isoformat() if last else None,
                         "notified_at": now.isoformat(), "notice": ref})
            result.notified += 1
            if progress and result.notified % 100 == 0:
                progress(result)
    log.info("inactivity.sweep", **{k: v for k, v in result.to_dict().items() if k != "errors"})
    return result


def _pending(rt: Runtime, email: str) -> bool:
    with rt.sessions() as s:
        found = s.scalar(sa.select(ScheduledAction.id).where(
            ScheduledAction.kind == scheduler.KIND_INACTIVITY, ScheduledAction.subject_hash == rt.subject_hash(email),
            ScheduledAction.status.in_(scheduler.OPEN)).limit(1))
    return found is not None


def _notice(rt: Runtime, email: str, last: datetime | None, due: datetime, months: int) -> Notice:
    # No request exists yet, so no language was chosen: the settings' default (the account does not say)
    lang = language(rt.settings.requests.language)
    controller = rt.data_map.controller
    return inactivity_notice(lang, email, lang.text(controller.name), controller.contact, last, due,
                             months)
