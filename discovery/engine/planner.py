"""Request type x data map x retention rules -> one action per system and entity, with its reason.

The plan is what `--dry-run` shows and what the ledger's tasks are made from: one task per
(system, action). Under erasure, an entity with a legal hold gets two steps: restrict the
rows still inside the hold, erase the rest; both are carried out by the system's erase task.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from connectors.base import N_, EntityPolicy, Note, note
from discovery.engine.ledger import RequestType

# Reasons stay English in the ledger and the manifest (`reason`); each step also keeps its reason as a Note
# (msgid + values, `note`), so the bundle page shows it in the person's language.
OUT_OF_SCOPE = N_("outside this request's scope")
NOT_FOUND = N_("the person was not found in this system")
REFUSED = "refused"  # a step's action when carrying it out would change another person's records
CHANGES = (RequestType.ERASURE, RequestType.RESTRICTION, RequestType.LIFT_RESTRICTION)


@dataclass(frozen=True)
class PlanStep:
    system: str
    entity: str
    action: str  # export | erase | restrict | lift_restriction | skip
    reason: str
    task: str | None  # the (system, task) that carries it out; None for skip
    note: Note | None = field(default=None, compare=False)  # `reason` as a Note, for the person's language

    def to_dict(self) -> dict[str, Any]:
        return {"system": self.system, "entity": self.entity, "action": self.action, "reason": self.reason,
                "task": self.task, "note": self.note.to_dict() if self.note else None}


def _step(system: str, entity: str, action: str, why: Note, task: str | None) -> PlanStep:
    return PlanStep(system, entity, action, why.render(), task, why)


@dataclass(frozen=True)
class SystemView:
    """What the planner needs of one system: found or not (None: unknown, locate failed), and policies.

    `in_scope` False: the request is limited to other systems; this one is neither asked nor acted on.
    """

    name: str
    found: bool | None
    policies: dict[str, EntityPolicy]
    locate_error: str | None = None
    in_scope: bool = True
    # entity -> why -> records reached but left alone: not this person's (counts only)
    skipped: dict[str, dict[str, int]] = field(default_factory=dict)
    # distinct identifiers, not this person's, on the records a change would touch
    others: int = 0


def plan(request_type: RequestType | str, systems: list[SystemView], confirmed: bool = False) -> list[PlanStep]:
    """`confirmed`: an operator gave a reason to change records that also name other people."""
    rtype = RequestType(request_type)
    steps: list[PlanStep] = []
    for system in systems:
        if not system.in_scope:
            steps.append(_step(system.name, "*", "skip", Note(OUT_OF_SCOPE), None))
            continue
        if system.found is False:
            steps.append(_step(system.name, "*", "skip", Note(NOT_FOUND), None))
            continue
        if rtype in CHANGES and system.others and not confirmed:
            steps.append(_step(system.name, "*", REFUSED, note(
                N_("would change records holding {count} identifier(s) that are not this person's; confirm with a "
                   "reason (--confirm-others) to go ahead"), count=system.others), None))
            continue
        for entity, policy in system.policies.items():
            for step in _entity_steps(rtype, system.name, entity, policy):
                if system.found is None and step.action != "skip":
                    step = _step(step.system, step.entity, step.action, note(
                        N_("locate failed ({error}); acting on the identifiers known. {reason}"),
                        error=system.locate_error, reason=step.note), step.task)
                steps.append(step)
        for entity, why in system.skipped.items():
            for reason, n in why.items():
                steps.append(_step(system.name, entity, "skip", note(N_("{count} record(s) left alone: {reason}"),
                                                                     count=n, reason=Note(reason)), None))
    return steps


def refusals(steps: list[PlanStep]) -> list[PlanStep]:
    return [s for s in steps if s.action == REFUSED]


def _entity_steps(rtype: RequestType, system: str, entity: str, policy: EntityPolicy) -> list[PlanStep]:
    if rtype == RequestType.ACCESS:
        return [_step(system, entity, "export", Note(N_("Art. 15: a copy of the personal data")), "export")]
    if rtype == RequestType.PORTABILITY:
        if not policy.provided_by_subject:
            return [_step(system, entity, "skip",
                          Note(N_("not provided by the person; Art. 20 covers data they provided")), None)]
        return [_step(system, entity, "export", Note(N_("Art. 20: data the person provided")), "export")]
    erase = policy.erase_note or policy.erase
    restrict = policy.restrict_note or policy.restrict
    if rtype == RequestType.ERASURE:
        if policy.hold:
            hold = policy.hold
            reason = dict(hold.reasons) if hold.reasons else hold.reason
            return [
                _step(system, entity, "restrict", note(
                    N_("records less than {years} years old by {column} are kept for {reason}; restricted ({how}) "
                       "until the hold ends"), years=hold.years, column=hold.from_field, reason=reason,
                    how=restrict), "erase"),
                _step(system, entity, "erase", note(N_("records past the {years}-year hold: {how}"),
                                                    years=hold.years, how=erase), "erase"),
            ]
        return [_step(system, entity, "erase", note(N_("Art. 17: {how}"), how=erase), "erase")]
    # restriction and its lifting
    if policy.restrict is None:
        return [_step(system, entity, "skip", Note(N_("no restriction is mapped for this entity")), None)]
    if rtype == RequestType.RESTRICTION:
        return [_step(system, entity, "restrict", note(N_("Art. 18: {how}"), how=restrict), "restrict")]
    return [_step(system, entity, "lift_restriction", Note(N_("restriction lifted")), "lift_restriction")]


def tasks_of(steps: list[PlanStep]) -> dict[tuple[str, str], list[str]]:
    """(system, task action) -> entities it covers, in plan order."""
    out: dict[tuple[str, str], list[str]] = {}
    for step in steps:
        if step.task is None:
            continue
        entities = out.setdefault((step.system, step.task), [])
        if step.entity not in entities:
            entities.append(step.entity)
    return out
