"""Marketing retention: newsletter data is kept while subscribed, trial data until the trial ends.

`sweep_marketing` asks every Mautic system for the people who unsubscribed from the newsletter
and those whose trial has ended, and schedules for each an erasure in that system only
(`newsletter_erasure` / `trial_erasure`, due after the data map's delay; an open action of the
same kind for the person is not added again). When the action falls due the scheduler asks
Mautic once more and cancels it if the person subscribed again or the trial was extended.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
import structlog

from connectors.mautic import MauticConnector
from discovery.engine.ledger import ScheduledAction
from discovery.engine.runtime import Runtime
from discovery.schedule import scheduler

log = structlog.get_logger(__name__)


@dataclass
class MarketingSweep:
    at: datetime
    systems: list[str] = field(default_factory=list)
    unsubscribed: int = 0  # people found unsubscribed
    trials_ended: int = 0  # people found with an ended trial
    scheduled: int = 0  # erasures scheduled now
    already_scheduled: int = 0  # an open action of the same kind existed
    action_ids: list[int] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"at": self.at.isoformat(), "systems": self.systems, "unsubscribed": self.unsubscribed,
                "trials_ended": self.trials_ended, "scheduled": self.scheduled,
                "already_scheduled": self.already_scheduled, "action_ids": self.action_ids}


def sweep_marketing(rt: Runtime, actor: str = "marketing-sweep", systems: list[str] | None = None) -> MarketingSweep:
    """`systems`: only these Mautic systems (default all); `dsar retention run` sweeps one rule's system."""
    now = rt.clock()
    result = MarketingSweep(at=now)
    for name, conn in rt.connectors().items():
        if not isinstance(conn, MauticConnector) or (systems is not None and name not in systems):
            continue
        result.systems.append(name)
        cfg = conn.config
        unsubscribed = conn.unsubscribed_contacts()
        result.unsubscribed += len(unsubscribed)
        for email in unsubscribed:
            _schedule(rt, result, name, scheduler.KIND_NEWSLETTER, email,
                      now + timedelta(days=cfg.newsletter_erasure_delay_days),
                      f"unsubscribed from the newsletter in {name}: newsletter data is kept only while "
                      f"subscribed; erased in {name} only", actor)
        ended = conn.expired_trials(now)
        result.trials_ended += len(ended)
        for email in ended:
            _schedule(rt, result, name, scheduler.KIND_TRIAL, email,
                      now + timedelta(days=cfg.trial_erasure_delay_days),
                      f"trial ended ({cfg.trial_field} before {now:%Y-%m-%d}): trial data is kept until the "
                      f"trial ends; erased in {name} only", actor)
    log.info("marketing.sweep", **{k: v for k, v in result.to_dict().items() if k != "action_ids"})
    return result


def _schedule(rt: Runtime, result: MarketingSweep, system: str, kind: str, email: str, due: datetime,
              reason: str, actor: str) -> None:
    if _pending(rt, kind, email):  # checked first so a daily sweep does not audit a repeat per person
        result.already_scheduled += 1
        return
    action, created = scheduler.schedule(rt, kind, email, due, reason, actor,
                                         details={"system": system, "systems": [system]})
    if created:
        result.scheduled += 1
        result.action_ids.append(action.id)
    else:
        result.already_scheduled += 1


def _pending(rt: Runtime, kind: str, email: str) -> bool:
    with rt.sessions() as s:
        found = s.scalar(sa.select(ScheduledAction.id).where(
            ScheduledAction.kind == kind, ScheduledAction.subject_hash == rt.subject_hash(email),
            ScheduledAction.status.in_(scheduler.OPEN)).limit(1))
    return found is not None
