"""Request type x data map x retention rules -> one action per system and entity, with its reason.

The plan is what `--dry-run` shows and what the ledger's tasks are made from: one task per
(system, action). Under erasure, an entity with a legal hold gets two steps: restrict the
rows still inside the hold, erase the rest; both are carried out by the system's erase task.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from connectors.base import EntityPolicy
from discovery.engine.ledger import RequestType
from discovery.i18n.languages import N_

# Reasons stay English in the ledger and the manifest; the fixed ones are in the catalogue, so the bundle
# page shows them in the person's language.
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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


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
            steps.append(PlanStep(system.name, "*", "skip", OUT_OF_SCOPE, None))
            continue
        if system.found is False:
            steps.append(PlanStep(system.name, "*", "skip", NOT_FOUND, None))
            continue
        prefix = f"locate failed ({system.locate_error}); acting on the identifiers known. " if system.found is None \
            else ""
        if rtype in CHANGES and system.others and not confirmed:
            steps.append(PlanStep(system.name, "*", REFUSED,
                                  f"would change records holding {system.others} identifier(s) that are not this "
                                  "person's; confirm with a reason (--confirm-others) to go ahead", None))
            continue
        for entity, policy in system.policies.items():
            steps.extend(_entity_steps(rtype, system.name, entity, policy, prefix))
        for entity, why in system.skipped.items():
            for reason, n in why.items():
                steps.append(PlanStep(system.name, entity, "skip", f"{n} record(s) left alone: {reason}", None))
    return steps


def refusals(steps: list[PlanStep]) -> list[PlanStep]:
    return [s for s in steps if s.action == REFUSED]


def _entity_steps(rtype: RequestType, system: str, entity: str, policy: EntityPolicy, prefix: str) -> list[PlanStep]:
    if rtype == RequestType.ACCESS:
        return [PlanStep(system, entity, "export", prefix + N_("Art. 15: a copy of the personal data"), "export")]
    if rtype == RequestType.PORTABILITY:
        if not policy.provided_by_subject:
            return [PlanStep(system, entity, "skip",
                             N_("not provided by the person; Art. 20 covers data they provided"), None)]
        return [PlanStep(system, entity, "export", prefix + N_("Art. 20: data the person provided"), "export")]
    if rtype == RequestType.ERASURE:
        if policy.hold:
            hold = policy.hold
            return [
                PlanStep(system, entity, "restrict",
                         prefix + f"records less than {hold.years} years old by {hold.from_field} are kept for "
                         f"{hold.reason}; restricted ({policy.restrict}) until the hold ends", "erase"),
                PlanStep(system, entity, "erase",
                         prefix + f"records past the {hold.years}-year hold: {policy.erase}", "erase"),
            ]
        return [PlanStep(system, entity, "erase", prefix + f"Art. 17: {policy.erase}", "erase")]
    # restriction and its lifting
    if policy.restrict is None:
        return [PlanStep(system, entity, "skip", N_("no restriction is mapped for this entity"), None)]
    if rtype == RequestType.RESTRICTION:
        return [PlanStep(system, entity, "restrict", prefix + f"Art. 18: {policy.restrict}", "restrict")]
    return [PlanStep(system, entity, "lift_restriction", prefix + N_("restriction lifted"), "lift_restriction")]


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
