"""The data-map schema of a SQL system: tables, identity columns, references, strategies, holds.

Everything a SQL connector knows about a schema comes from here; no table or column name of
any company's schema appears in code. Validation errors name the system, entity and key.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from connectors.base import IdentityType, PermanentError

MaskMethod = Literal["null", "hash", "redact"]


class Fixed(BaseModel):
    model_config = ConfigDict(extra="forbid")
    fixed: Any


class EraseSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    strategy: Literal["delete", "mask"]
    # column -> null | hash | redact | {fixed: value}; only with strategy mask
    mask: dict[str, MaskMethod | Fixed] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _mask_matches_strategy(self) -> EraseSpec:
        if self.strategy == "mask" and not self.mask:
            raise ValueError("strategy 'mask' needs a 'mask' mapping of column -> null|hash|redact|{fixed: value}")
        if self.strategy == "delete" and self.mask:
            raise ValueError("'mask' is only allowed with strategy 'mask'")
        return self


class SetSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    set: dict[str, Any] = Field(min_length=1)


class HoldSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    years: int = Field(gt=0, le=100)
    # the date column the hold runs from
    from_: str = Field(alias="from")
    reason: str = Field(min_length=3)


class EntitySpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    table: str
    primary_key: str = "id"
    # identity type -> column holding it
    identities: dict[IdentityType, str] = Field(default_factory=dict)
    # column -> "entity.column" it references (the parent's rows are the person's)
    references: dict[str, str] = Field(default_factory=dict)
    # column -> data category (contact, identity, billing, usage, ...); what an export contains
    fields: dict[str, str] = Field(default_factory=dict)
    # column -> why it is not disclosed (e.g. a password hash)
    withheld: dict[str, str] = Field(default_factory=dict)
    erase: EraseSpec
    restrict: SetSpec | None = None
    lift: SetSpec | None = None
    hold: HoldSpec | None = None
    provided_by_subject: bool = True

    @field_validator("references")
    @classmethod
    def _reference_shape(cls, value: dict[str, str]) -> dict[str, str]:
        for column, target in value.items():
            if target.count(".") != 1 or not all(target.split(".")):
                raise ValueError(f"reference {column}: '{target}' must be 'entity.column'")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> EntitySpec:
        if self.hold and not self.restrict:
            raise ValueError("'hold' needs 'restrict': held rows are restricted instead of erased")
        if self.restrict and not self.lift:
            raise ValueError("'restrict' needs a matching 'lift' (how the restriction is undone)")
        if not self.identities and not self.references:
            raise ValueError("needs 'identities' or 'references': otherwise no row can be tied to a person")
        return self

    def columns(self) -> set[str]:
        cols = {self.primary_key, *self.identities.values(), *self.references, *self.fields, *self.withheld}
        cols |= set(self.erase.mask)
        for spec in (self.restrict, self.lift):
            if spec:
                cols |= set(spec.set)
        if self.hold:
            cols.add(self.hold.from_)
        return cols


class SqlSystemSpec(BaseModel):
    model_config = ConfigDict(extra="allow")  # system-level keys (purpose, legal basis ...) belong to discovery
    kind: Literal["sql"]
    url_env: str
    entities: dict[str, EntitySpec] = Field(min_length=1)

    @model_validator(mode="after")
    def _graph(self) -> SqlSystemSpec:
        for name, entity in self.entities.items():
            for column, target in entity.references.items():
                parent = target.split(".")[0]
                if parent not in self.entities:
                    raise ValueError(f"entity {name}: reference {column} -> unknown entity '{parent}'")
        order = topological(self.entities)  # raises on cycles
        for name in order:
            entity = self.entities[name]
            for target in entity.references.values():
                parent_spec = self.entities[target.split(".")[0]]
                # Deleting a parent while a child row may stay (masked, or held) breaks the reference.
                if parent_spec.erase.strategy == "delete" and (entity.erase.strategy != "delete" or entity.hold):
                    raise ValueError(
                        f"entity {target.split('.')[0]} is erased by delete, but {name} references it and may "
                        f"keep rows ({'a hold' if entity.hold else 'mask strategy'}); mask the parent instead"
                    )
        return self


def topological(entities: dict[str, EntitySpec]) -> list[str]:
    """Parents before children; a reference cycle is a data-map error."""
    order: list[str] = []
    state: dict[str, int] = {}

    def visit(name: str, path: tuple[str, ...]) -> None:
        if state.get(name) == 2:
            return
        if state.get(name) == 1:
            raise ValueError(f"reference cycle: {' -> '.join((*path, name))}")
        state[name] = 1
        for target in entities[name].references.values():
            visit(target.split(".")[0], (*path, name))
        state[name] = 2
        order.append(name)

    for name in entities:
        visit(name, ())
    return order


def parse_system(system: str, settings: dict[str, Any]) -> SqlSystemSpec:
    try:
        return SqlSystemSpec.model_validate(settings)
    except ValidationError as exc:
        raise PermanentError(system, f"data map: {_first_error(exc)}") from None


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"] if p not in ("function-after",))
    message = err["msg"].removeprefix("Value error, ")
    return f"{where}: {message}" if where else message
