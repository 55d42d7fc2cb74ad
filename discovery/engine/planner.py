"""Request type x data map x retention rules -> one action per system and entity, with its reason.

The plan is what `--dry-run` shows and what the ledger's tasks are made from: one task per
(system, action). Under erasure, an entity with a legal hold gets two steps: restrict the
rows still inside the hold, erase the rest; both are carried out by the system's erase task.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from connectors.base import EntityPolicy
from discovery.engine.ledger import RequestType

OUT_OF_SCOPE = "outside this request's scope"


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


def plan(request_type: RequestType | str, systems: list[SystemView]) -> list[PlanStep]:
    rtype = RequestType(request_type)
    steps: list[PlanStep] = []
    for system in systems:
        if not system.in_scope:
            steps.append(PlanStep(system.name, "*", "skip", OUT_OF_SCOPE, None))
            continue
        if system.found is False:
            steps.append(PlanStep(system.name, "*", "skip", "the person was not found in this system", None))
            continue
        prefix = f"locate failed ({system.locate_error}); acting on the identifiers known. " if system.found is None \
            else ""
        for entity, policy in system.policies.items():
            steps.extend(_entity_steps(rtype, system.name, entity, policy, prefix))
    return steps


def _entity_steps(rtype: RequestType, system: str, entity: str, policy: EntityPolicy, prefix: str) -> list[PlanStep]:
    if rtype == RequestType.ACCESS:
        return [PlanStep(system, entity, "export", prefix + "Art. 15: a copy of the personal data", "export")]
    if rtype == RequestType.PORTABILITY:
        if not policy.provided_by_subject:
            return [PlanStep(system, entity, "skip",
                             "not provided by the person; Art. 20 covers data they provided", None)]
        return [PlanStep(system, entity, "export", prefix + "Art. 20: data the person provided", "export")]
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
        return [PlanStep(system, entity, "skip", "no restriction is mapped for this entity", None)]
    if rtype == RequestType.RESTRICTION:
        return [PlanStep(system, entity, "restrict", prefix + f"Art. 18: {policy.restrict}", "restrict")]
    return [PlanStep(system, entity, "lift_restriction", prefix + "restriction lifted", "lift_restriction")]


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
