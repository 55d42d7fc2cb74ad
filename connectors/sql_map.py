"""The data-map schema of a SQL system: tables, identity columns, references, strategies, holds.

Everything a SQL connector knows about a schema comes from here; no table or column name of
any company's schema appears in code. Validation errors name the system, entity and key.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from connectors.base import IdentityType, PermanentError
from connectors.s3_files import KeyTemplate, S3Settings
from connectors.vendor_settings import first_error

MaskMethod = Literal["null", "hash", "redact"]

# Identifier types several people may hold in one table (a household's phone, a shared computer's
# cookie): a row matched only by one of them is the subject's only if nothing on it names someone else,
# and it teaches nothing. An entity's `shared` list overrides this.
SHARED_BY_DEFAULT = frozenset({IdentityType.PHONE, IdentityType.MATOMO_VISITOR_ID})


class Reference(BaseModel):
    """A column pointing at another entity's row, and whether that row's person owns this row.

    Ownership (`owner: true`, and the shorthand `column: entity.column`): a user's orders are the
    user's data, found, exported, erased and restricted with them. A relation (`owner: false`): the
    service requests an employee handled, a company several contacts share. Those rows belong to
    someone else: they are exported as related data only with `export: true` (identity columns left
    out), never teach identifiers, and are never erased or restricted on this person's behalf.
    """

    model_config = ConfigDict(extra="forbid")
    to: str
    owner: bool
    export: bool = False

    @field_validator("to")
    @classmethod
    def _shape(cls, value: str) -> str:
        if value.count(".") != 1 or not all(value.split(".")):
            raise ValueError(f"'{value}' must be 'entity.column'")
        return value

    @model_validator(mode="after")
    def _export_only_related(self) -> Reference:
        if self.export and self.owner:
            raise ValueError("'export' is for relations (owner: false); owned rows are always exported")
        return self

    @property
    def entity(self) -> str:
        return self.to.split(".")[0]

    @property
    def column(self) -> str:
        return self.to.split(".")[1]


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
    # the date column the hold runs from; "entity.column" takes it from the referenced parent row
    # (invoice lines are kept as long as their invoice)
    from_: str = Field(alias="from")
    # the law behind the hold, for the person: one text, or one per language ({en: ..., nb: ...})
    reason: str | dict[str, str] = Field(min_length=1)

    @field_validator("reason")
    @classmethod
    def _readable(cls, value: str | dict[str, str]) -> str | dict[str, str]:
        if any(len(text.strip()) < 3 for text in ([value] if isinstance(value, str) else value.values())):
            raise ValueError("give the reason in words (3 characters at least)")
        return value

    def reason_text(self) -> str:
        """The reason for logs, plans and receipts: the English text when there are several."""
        if isinstance(self.reason, str):
            return self.reason
        return self.reason.get("en") or next(iter(self.reason.values()))

    def parent(self) -> tuple[str, str] | None:
        """(entity, column) when the date is the referenced parent's, else None."""
        if "." not in self.from_:
            return None
        entity, column = self.from_.split(".", 1)
        return entity, column


class FilesSpec(BaseModel):
    """Files in S3 that belong to each row: erased, restricted and exported with it."""

    model_config = ConfigDict(extra="forbid")
    # e.g. "invoices/{customer_id}/{number}.pdf" (one object) or "invoices/{customer_id}/" (a folder)
    key: str
    bucket: str | None = None  # default: the system's s3.bucket

    @field_validator("key")
    @classmethod
    def _template(cls, value: str) -> str:
        KeyTemplate(value)
        return value

    def template(self) -> KeyTemplate:
        return KeyTemplate(self.key)


class InactivitySpec(BaseModel):
    """Where a system records a person's last activity (accounts inactive too long are erased after notice)."""

    model_config = ConfigDict(extra="forbid")
    entity: str
    last_activity: str  # column
    fallback: str | None = None  # column used when last_activity is empty (e.g. created_at: never logged in)


class EntitySpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    table: str
    primary_key: str = "id"
    # identity type -> column holding it
    identities: dict[IdentityType, str] = Field(default_factory=dict)
    # column -> "entity.column" (the parent's person owns this row), or {to, owner: false, export} (a relation)
    references: dict[str, Reference] = Field(default_factory=dict)
    # identity types learned from rows reached through ownership (rows matched directly teach all theirs)
    learn: list[IdentityType] = Field(default_factory=list)
    # identity types several people may hold in this table; default: phone, matomo_visitor_id
    shared: list[IdentityType] | None = None
    # column -> data category (contact, identity, billing, usage, ...); what an export contains
    fields: dict[str, str] = Field(default_factory=dict)
    # column -> why it is not disclosed (e.g. a password hash)
    withheld: dict[str, str] = Field(default_factory=dict)
    erase: EraseSpec
    restrict: SetSpec | None = None
    lift: SetSpec | None = None
    hold: HoldSpec | None = None
    files: FilesSpec | None = None
    provided_by_subject: bool = True
    # Art. 20: the fields a portability export carries (what the person provided, or generated by using
    # the service); default: all of `fields`. Fields we derived or set ourselves (flags, scores) stay out.
    portable: list[str] | None = None

    @model_validator(mode="after")
    def _portable_are_fields(self) -> EntitySpec:
        unknown = sorted(set(self.portable or ()) - set(self.fields))
        if unknown:
            raise ValueError(f"portable: {', '.join(unknown)} not in 'fields'")
        return self

    @field_validator("references", mode="before")
    @classmethod
    def _shorthand_is_ownership(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            return value
        out = {}
        for column, target in value.items():
            if isinstance(target, str):
                if target.count(".") != 1 or not all(target.split(".")):
                    raise ValueError(f"reference {column}: '{target}' must be 'entity.column'")
                target = {"to": target, "owner": True}
            out[column] = target
        return out

    @model_validator(mode="after")
    def _consistent(self) -> EntitySpec:
        if self.hold and not self.restrict:
            raise ValueError("'hold' needs 'restrict': held rows are restricted instead of erased")
        if self.restrict and not self.lift:
            raise ValueError("'restrict' needs a matching 'lift' (how the restriction is undone)")
        if not self.identities and not self.references:
            raise ValueError("needs 'identities' or 'references': otherwise no row can be tied to a person")
        unknown = sorted(set(self.learn) - set(self.identities))
        if unknown:
            raise ValueError(f"learn: {', '.join(unknown)} not in 'identities'")
        if self.learn and not self.owners():
            raise ValueError("'learn' needs an owning reference: identifiers are learned only from rows "
                             "the person owns")
        owners = {r.entity for r in self.owners().values()}
        if len(owners) > 1:
            raise ValueError(f"owning references to {', '.join(sorted(owners))}: a row has one owner; declare "
                             "the others as relations ({to: entity.column, owner: false})")
        return self

    def owners(self) -> dict[str, Reference]:
        """column -> reference, for the references whose row's person owns this row."""
        return {c: r for c, r in self.references.items() if r.owner}

    def relations(self) -> dict[str, Reference]:
        return {c: r for c, r in self.references.items() if not r.owner}

    def shared_types(self) -> frozenset[IdentityType]:
        return SHARED_BY_DEFAULT if self.shared is None else frozenset(self.shared)

    def columns(self) -> set[str]:
        cols = {self.primary_key, *self.identities.values(), *self.references, *self.fields, *self.withheld}
        cols |= set(self.erase.mask)
        for spec in (self.restrict, self.lift):
            if spec:
                cols |= set(spec.set)
        if self.hold and not self.hold.parent():
            cols.add(self.hold.from_)
        if self.files:
            cols |= set(self.files.template().fields)
        return cols


class SqlSystemSpec(BaseModel):
    model_config = ConfigDict(extra="allow")  # system-level keys (purpose, legal basis ...) belong to discovery
    kind: Literal["sql"]
    url_env: str
    entities: dict[str, EntitySpec] = Field(min_length=1)
    s3: S3Settings | None = None  # where the entities' `files` live
    inactivity: InactivitySpec | None = None

    @model_validator(mode="after")
    def _graph(self) -> SqlSystemSpec:
        if self.inactivity and self.inactivity.entity not in self.entities:
            raise ValueError(f"inactivity.entity: unknown entity '{self.inactivity.entity}'")
        for name, entity in self.entities.items():
            for column, ref in entity.references.items():
                parent = ref.entity
                if parent not in self.entities:
                    raise ValueError(f"entity {name}: reference {column} -> unknown entity '{parent}'")
        order = topological(self.entities)  # raises on ownership cycles
        for name in order:
            entity = self.entities[name]
            _check_extras(self, name, entity)
            for ref in entity.owners().values():
                target = ref.to
                parent_spec = self.entities[ref.entity]
                # An owned row that names someone else is left alone: its parent cannot be deleted under it.
                if parent_spec.erase.strategy == "delete" and set(entity.identities) - set(entity.learn):
                    raise ValueError(f"entity {ref.entity} is erased by delete, but {name} rows it owns may name "
                                     "someone else and be kept; mask the parent instead (or list the child's "
                                     "identity types in 'learn' if they are always the owner's)")
                # Deleting a parent while a child row may stay (masked, or held) breaks the reference,
                # unless the child is held exactly as long as the parent (its hold runs from the parent's).
                if parent_spec.erase.strategy == "delete" and (entity.erase.strategy != "delete" or entity.hold) \
                        and not _held_with_parent(entity, target.split(".")[0], parent_spec):
                    raise ValueError(
                        f"entity {target.split('.')[0]} is erased by delete, but {name} references it and may "
                        f"keep rows ({'a hold' if entity.hold else 'mask strategy'}); mask the parent instead"
                    )
        return self


def _check_extras(system: SqlSystemSpec, name: str, entity: EntitySpec) -> None:
    parent = entity.hold.parent() if entity.hold else None
    if parent and parent[0] not in {r.entity for r in entity.owners().values()}:
        raise ValueError(f"entity {name}: hold.from '{parent[0]}.{parent[1]}' names an entity it does not reference")
    if entity.files and system.s3 is None:
        raise ValueError(f"entity {name}: 'files' needs the system's 's3' settings (bucket, endpoint_url ...)")
    if system.inactivity and system.inactivity.entity == name and IdentityType.EMAIL not in entity.identities:
        raise ValueError(f"inactivity.entity {name} has no e-mail identity: nobody could be told or erased")


def _held_with_parent(entity: EntitySpec, parent_name: str, parent: EntitySpec) -> bool:
    """The child's hold runs from the parent's own hold date for as many years: both end together."""
    own = entity.hold.parent() if entity.hold else None
    return bool(entity.erase.strategy == "delete" and own and own[0] == parent_name and parent.hold
                and not parent.hold.parent() and parent.hold.from_ == own[1] and entity.hold
                and parent.hold.years == entity.hold.years)


def topological(entities: dict[str, EntitySpec]) -> list[str]:
    """Owners before what they own; an ownership cycle is a data-map error (relations may form cycles)."""
    order: list[str] = []
    state: dict[str, int] = {}

    def visit(name: str, path: tuple[str, ...]) -> None:
        if state.get(name) == 2:
            return
        if state.get(name) == 1:
            raise ValueError(f"reference cycle: {' -> '.join((*path, name))}")
        state[name] = 1
        for ref in entities[name].owners().values():
            visit(ref.entity, (*path, name))
        state[name] = 2
        order.append(name)

    for name in entities:
        visit(name, ())
    return order


def parse_system(system: str, settings: dict[str, Any]) -> SqlSystemSpec:
    try:
        return SqlSystemSpec.model_validate(settings)
    except ValidationError as exc:
        raise PermanentError(system, f"data map: {first_error(exc)}") from None



def risks(spec: SqlSystemSpec) -> list[str]:
    """Shapes of the map where one person's request could reach another's rows (`dsar check` warnings).

    None of them is acted on wrongly (relations never teach or change, rows naming someone else are
    skipped), but each deserves a look from whoever maintains the map.
    """
    out: list[str] = []
    for name, entity in spec.entities.items():
        for column, ref in entity.relations().items():
            if entity.identities:
                out.append(f"entity {name}: reached through the relation {column} -> {ref.to} and holds identity "
                           f"columns ({', '.join(sorted(entity.identities.values()))}): its rows name other people; "
                           "they are never learned from or changed for the related person")
        if entity.owners():
            unlearned = sorted(set(entity.identities) - set(entity.learn))
            if unlearned:
                cols = ", ".join(entity.identities[t] for t in unlearned)
                out.append(f"entity {name}: owned through {', '.join(entity.owners())} and holds identity column(s) "
                           f"{cols} not in 'learn': an owned row whose {cols} names someone else is skipped; if they "
                           "are always the owner's own, list their types in 'learn'")
    for cycle in _reference_cycles(spec.entities):
        out.append(f"reference cycle {' -> '.join(cycle)}: relations could carry one person's identifiers to "
                   "another's rows; they are followed one hop and never teach")
    return out


def _reference_cycles(entities: dict[str, EntitySpec]) -> list[tuple[str, ...]]:
    """Cycles over every reference (only relations can form one), each once, from its smallest entity."""
    found: set[tuple[str, ...]] = set()

    def walk(start: str, here: str, path: tuple[str, ...]) -> None:
        for ref in entities[here].references.values():
            nxt = ref.entity
            if nxt == start:
                found.add((*path, start))
            elif nxt not in path and nxt > start:
                walk(start, nxt, (*path, nxt))

    for name in sorted(entities):
        walk(name, name, (name,))
    return sorted(found)
