"""The data-map schema of a SQL system: tables, identity columns, references, strategies, holds.

Everything a SQL connector knows about a schema comes from here; no table or column name of
any company's schema appears in code. Validation errors name the system, entity and key.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from connectors.base import IdentityType, PermanentError
from connectors.retention import RetentionSpec
from connectors.s3_files import KeyTemplate, S3Settings
from connectors.vendor_settings import first_error

MaskMethod = Literal["null", "hash", "redact"]

# Identifier types several people may hold in one table (a household's phone, a shared computer's
# cookie): a row matched only by one of them is the subject's only if nothing on it names someone else,
# and it teaches nothing. An entity's `shared` list overrides this.
SHARED_BY_DEFAULT = frozenset({IdentityType.PHONE, IdentityType.MATOMO_VISITOR_ID})


class Reference(BaseModel):
    """A column of this table holding the value of another entity's column, and whether that row's
    person owns this row.

    A reference is a join, read in either direction: `orders: {customer_id: customers.id}` (the foreign
    key is on this table) and `addresses: {id: customers.address_id}` (the foreign key is on the other
    table: an address is reached through the customer pointing at it) both say "a row here is reached
    when its column's value is in the other entity's column, on that entity's rows that are the
    person's". Which table holds the foreign key matters only to the order of deletes, which erasure
    takes from the database's own foreign keys.

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


def _in_words(value: str | dict[str, str]) -> str | dict[str, str]:
    if any(len(text.strip()) < 3 for text in ([value] if isinstance(value, str) else value.values())):
        raise ValueError("give the reason in words (3 characters at least)")
    return value


def _english(value: str | dict[str, str]) -> str:
    """A map text for logs, plans and receipts: the English one when there are several."""
    if isinstance(value, str):
        return value
    return value.get("en") or next(iter(value.values()))


class EraseSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # keep: exported, never changed by an erasure (a product catalogue); needs `reason`
    strategy: Literal["delete", "mask", "keep"]
    # column -> null | hash | redact | {fixed: value}; only with strategy mask
    mask: dict[str, MaskMethod | Fixed] = Field(default_factory=dict)
    # why rows are kept (strategy keep), for the person: one text or one per language
    reason: str | dict[str, str] | None = None

    @field_validator("reason")
    @classmethod
    def _readable(cls, value: str | dict[str, str] | None) -> str | dict[str, str] | None:
        return None if value is None else _in_words(value)

    @model_validator(mode="after")
    def _mask_matches_strategy(self) -> EraseSpec:
        if self.strategy == "mask" and not self.mask:
            raise ValueError("strategy 'mask' needs a 'mask' mapping of column -> null|hash|redact|{fixed: value}")
        if self.strategy != "mask" and self.mask:
            raise ValueError("'mask' is only allowed with strategy 'mask'")
        if self.strategy == "keep" and self.reason is None:
            raise ValueError("strategy 'keep' needs a 'reason': the person is told why the rows stay")
        if self.strategy != "keep" and self.reason is not None:
            raise ValueError("'reason' is only allowed with strategy 'keep'")
        return self

    def reason_text(self) -> str:
        return _english(self.reason or "")


class SetSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    set: dict[str, Any] = Field(min_length=1)


class HoldSpec(BaseModel):
    """Rows kept for a legal reason: `years` from a date (restricted meanwhile), or `with` a held parent.

    `{with: invoices}`: a row is kept, and not written, while the invoices row owning it is held, and
    erased with it when that hold ends; no restriction marker is needed on this table.
    """

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    years: int | None = Field(default=None, gt=0, le=100)
    # the date column the hold runs from; "entity.column" takes it from the referenced parent row
    # (invoice lines are kept as long as their invoice)
    from_: str | None = Field(default=None, alias="from")
    # the law behind the hold, for the person: one text, or one per language ({en: ..., nb: ...});
    # a `with` hold takes its parent's unless it gives one
    reason: str | dict[str, str] | None = None
    # the owning entity whose hold this table's rows share
    with_: str | None = Field(default=None, alias="with")

    @field_validator("reason")
    @classmethod
    def _readable(cls, value: str | dict[str, str] | None) -> str | dict[str, str] | None:
        return None if value is None else _in_words(value)

    @model_validator(mode="after")
    def _dated_or_with(self) -> HoldSpec:
        if self.with_ is not None:
            if self.years is not None or self.from_ is not None:
                raise ValueError("'with' takes the parent's hold: give no 'years' or 'from'")
        elif self.years is None or self.from_ is None or self.reason is None:
            raise ValueError("a hold needs 'years', 'from' and 'reason' (or 'with: <held parent entity>')")
        return self

    def reason_text(self) -> str:
        """The reason for logs, plans and receipts: the English text when there are several."""
        return _english(self.reason or "")

    def parent(self) -> tuple[str, str] | None:
        """(entity, column) when the date is the referenced parent's, else None."""
        if self.from_ is None or "." not in self.from_:
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


def _listed(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


class EntitySpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    table: str
    # one column, or a composite key's columns in order (order_items: [order_id, product_id])
    primary_key: str | list[str] = "id"
    # identity type -> the column holding it, or several columns of that type (email: [email, alt_email])
    identities: dict[IdentityType, str | list[str]] = Field(default_factory=dict)
    # column -> "entity.column" (the other row's person owns this row), {to, owner: false, export} (a
    # relation), or a list of these (several tables point at this one: addresses of customers and orders)
    references: dict[str, list[Reference]] = Field(default_factory=dict)
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
    # how long rows are kept without anyone asking, and what then (connectors.retention, docs/retention.md)
    retention: RetentionSpec | None = None
    provided_by_subject: bool = True
    # Art. 20: the fields a portability export carries (what the person provided, or generated by using
    # the service); default: all of `fields`. Fields we derived or set ourselves (flags, scores) stay out.
    portable: list[str] | None = None

    @field_validator("primary_key")
    @classmethod
    def _key(cls, value: str | list[str]) -> str | list[str]:
        columns = _listed(value)
        if not columns or not all(columns) or len(set(columns)) != len(columns):
            raise ValueError("give one column, or a list of distinct columns (a composite key)")
        return value

    @field_validator("identities")
    @classmethod
    def _identity_columns(cls, value: dict[IdentityType, str | list[str]]) -> dict[IdentityType, str | list[str]]:
        columns = [c for cols in value.values() for c in _listed(cols)]
        if not all(columns) or any(isinstance(v, list) and not v for v in value.values()):
            raise ValueError("each identity type names a column, or a list of columns")
        if len(set(columns)) != len(columns):
            raise ValueError("a column holds one identity type")
        return value

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
        for column, targets in value.items():
            if isinstance(targets, list) and not targets:
                raise ValueError(f"reference {column}: an empty list")
            listed = []
            for target in _listed(targets):
                if isinstance(target, str):
                    if target.count(".") != 1 or not all(target.split(".")):
                        raise ValueError(f"reference {column}: '{target}' must be 'entity.column'")
                    target = {"to": target, "owner": True}
                listed.append(target)
            out[column] = listed
        return out

    @model_validator(mode="after")
    def _consistent(self) -> EntitySpec:
        if self.hold and self.hold.with_ is None and not self.restrict:
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
        if self.hold and self.erase.strategy == "keep":
            raise ValueError("strategy 'keep' never erases: a 'hold' has nothing to hold back")
        if self.hold and self.hold.with_ and self.hold.with_ not in self.owner_entities():
            raise ValueError(f"hold.with '{self.hold.with_}' is not an entity this one references as its owner")
        if self.retention:
            self._retention_consistent(self.retention)
        return self

    def _retention_consistent(self, rule: RetentionSpec) -> None:
        if self.erase.strategy == "keep":
            raise ValueError("retention: strategy 'keep' never erases; give the entity an erase strategy")
        parent = rule.parent()
        if parent and parent[0] not in self.owner_entities():
            raise ValueError(f"retention.from '{rule.from_}' names an entity this one does not reference as its owner")
        if rule.then == "anonymise":
            mask = rule.mask if rule.mask is not None else self.erase.mask
            if not mask:
                raise ValueError("retention: then anonymise needs a 'mask' (in the rule, or the entity's erase.mask)")
            for column, how in (rule.mask or {}).items():  # erase.mask's own were checked as it was parsed
                if not (how in ("null", "hash", "redact") or (isinstance(how, dict) and set(how) == {"fixed"})):
                    raise ValueError(f"retention.mask {column}: null, hash, redact or {{fixed: value}}")
        if rule.then == "notice":
            if parent:
                raise ValueError("retention: then notice runs from a column of the entity itself (last activity)")
            if rule.period.unit not in ("months", "years"):
                raise ValueError("retention: then notice counts in months or years (the inactivity sweep's unit)")
            if IdentityType.EMAIL not in self.identities:
                raise ValueError("retention: then notice needs an e-mail identity: nobody could be told")

    def retention_mask(self) -> dict[str, MaskMethod | Fixed]:
        """The masks `then: anonymise` writes: the rule's, else the entity's erase.mask."""
        rule = self.retention
        if rule is None or rule.mask is None:
            return dict(self.erase.mask)
        return {c: Fixed(fixed=m["fixed"]) if isinstance(m, dict) else m for c, m in rule.mask.items()}

    def key_columns(self) -> list[str]:
        """The primary key's columns, in the map's order (one for a simple key)."""
        return list(_listed(self.primary_key))

    def identity_columns(self) -> list[tuple[IdentityType, str]]:
        """(type, column) for every identity column, in the map's order."""
        return [(t, c) for t, cols in self.identities.items() for c in _listed(cols)]

    def links(self) -> list[tuple[str, Reference]]:
        """(column, reference) for every reference, in the map's order."""
        return [(c, r) for c, refs in self.references.items() for r in refs]

    def owners(self) -> list[tuple[str, Reference]]:
        """(column, reference) for the references whose row's person owns this row."""
        return [(c, r) for c, r in self.links() if r.owner]

    def relations(self) -> list[tuple[str, Reference]]:
        return [(c, r) for c, r in self.links() if not r.owner]

    def owner_entities(self) -> set[str]:
        return {r.entity for _, r in self.owners()}

    def shared_types(self) -> frozenset[IdentityType]:
        return SHARED_BY_DEFAULT if self.shared is None else frozenset(self.shared)

    def columns(self) -> set[str]:
        cols = {*self.key_columns(), *(c for _, c in self.identity_columns()), *self.references, *self.fields,
                *self.withheld}
        cols |= set(self.erase.mask)
        for spec in (self.restrict, self.lift):
            if spec:
                cols |= set(spec.set)
        if self.hold and self.hold.from_ and not self.hold.parent():
            cols.add(self.hold.from_)
        if self.files:
            cols |= set(self.files.template().fields)
        if self.retention:
            cols |= {c for c in (self.retention.from_, self.retention.fallback) if c and "." not in c}
            cols |= set(self.retention_mask())
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
        self._notice_rule()
        if self.inactivity and self.inactivity.entity not in self.entities:
            raise ValueError(f"inactivity.entity: unknown entity '{self.inactivity.entity}'")
        for name, entity in self.entities.items():
            for column, ref in entity.links():
                if ref.entity not in self.entities:
                    raise ValueError(f"entity {name}: reference {column} -> unknown entity '{ref.entity}'")
        order = topological(self.entities)  # raises on ownership cycles
        for name in order:
            entity = self.entities[name]
            _check_extras(self, name, entity)
            for column, ref in entity.owners():
                parent_name, parent_spec = ref.entity, self.entities[ref.entity]
                if not self.key_here(name, column, ref):
                    # The other table points at this row: deleting it under a row that stays breaks that key.
                    # (A held row keeps the rows it points at: erasure never erases a held row's own.)
                    if entity.erase.strategy == "delete" and parent_spec.erase.strategy != "delete":
                        raise ValueError(f"entity {name} is erased by delete, but {ref.to} points at it and "
                                         f"{parent_name} keeps its rows ({parent_spec.erase.strategy} strategy); "
                                         f"mask {name} instead")
                    continue
                # An owned row that names someone else is left alone: its parent cannot be deleted under it.
                if parent_spec.erase.strategy == "delete" and set(entity.identities) - set(entity.learn):
                    raise ValueError(f"entity {parent_name} is erased by delete, but {name} rows it owns may name "
                                     "someone else and be kept; mask the parent instead (or list the child's "
                                     "identity types in 'learn' if they are always the owner's)")
                # Deleting a parent while a child row may stay (masked, kept, or held) breaks the reference,
                # unless the child is held exactly as long as the parent (its hold runs from the parent's).
                if parent_spec.erase.strategy == "delete" and (entity.erase.strategy != "delete" or entity.hold) \
                        and not _held_with_parent(entity, parent_name, parent_spec):
                    why = "a hold" if entity.hold else f"{entity.erase.strategy} strategy"
                    raise ValueError(f"entity {parent_name} is erased by delete, but {name} references it and may "
                                     f"keep rows ({why}); mask the parent instead")
        return self

    def _notice_rule(self) -> None:
        """A `then: notice` rule is the inactivity sweep's: it stands for the `inactivity` key (which it fills
        in), or agrees with it, so one declaration says when an account is inactive."""
        notices = [(n, e.retention) for n, e in self.entities.items() if e.retention and e.retention.then == "notice"]
        if len(notices) > 1:
            raise ValueError(f"retention: then notice on {notices[0][0]} and {notices[1][0]}; one entity per system "
                             "holds the last activity")
        if not notices:
            return
        name, rule = notices[0]
        assert rule is not None
        if self.inactivity is None:
            self.inactivity = InactivitySpec(entity=name, last_activity=rule.from_, fallback=rule.fallback)
        elif (self.inactivity.entity, self.inactivity.last_activity, self.inactivity.fallback) != \
                (name, rule.from_, rule.fallback):
            raise ValueError(f"entity {name}: retention (then notice) and 'inactivity' disagree on the entity or "
                             "its columns; give one of them")

    def retention_rules(self) -> list[tuple[str, RetentionSpec]]:
        """(entity, rule) for every entity that declares one, owners first."""
        return [(n, e.retention) for n in topological(self.entities) if (e := self.entities[n]).retention]

    def key_here(self, name: str, column: str, ref: Reference) -> bool:
        """Whether the foreign key is on `name`'s table (it points at the other row): yes, unless the
        reference joins this table's own key to a column of the other table that is not its key
        (`addresses: {id: customers.address_id}`)."""
        return not (column in self.entities[name].key_columns()
                    and ref.column not in self.entities[ref.entity].key_columns())

    def dated_hold(self, name: str) -> tuple[str, HoldSpec] | None:
        """The entity whose dated hold `name`'s rows follow (itself, or up its `with` holds), and that hold."""
        seen: set[str] = set()
        hold = self.entities[name].hold
        while hold is not None and name not in seen:
            if hold.with_ is None:
                return name, hold
            seen.add(name)
            name = hold.with_
            hold = self.entities[name].hold
        return None

    def held_parents(self, name: str) -> list[tuple[str, Reference]]:
        """The owning references of `name` to entities whose rows may be held (a hold of their own, or a
        held parent of theirs): a row owned by a held row is never erased while that row is held."""
        return [(c, r) for c, r in self.entities[name].owners() if self._holdable(r.entity)]

    def _holdable(self, name: str) -> bool:
        return self.entities[name].hold is not None or bool(self.held_parents(name))


def _check_extras(system: SqlSystemSpec, name: str, entity: EntitySpec) -> None:
    parent = entity.hold.parent() if entity.hold else None
    if parent and parent[0] not in entity.owner_entities():
        raise ValueError(f"entity {name}: hold.from '{parent[0]}.{parent[1]}' names an entity it does not reference")
    if entity.hold and entity.hold.with_ and system.dated_hold(name) is None:
        raise ValueError(f"entity {name}: hold.with '{entity.hold.with_}' names an entity that has no hold")
    if entity.files and system.s3 is None:
        raise ValueError(f"entity {name}: 'files' needs the system's 's3' settings (bucket, endpoint_url ...)")
    if system.inactivity and system.inactivity.entity == name and IdentityType.EMAIL not in entity.identities:
        raise ValueError(f"inactivity.entity {name} has no e-mail identity: nobody could be told or erased")


def _held_with_parent(entity: EntitySpec, parent_name: str, parent: EntitySpec) -> bool:
    """The child's hold ends with the parent's: `with` the parent, or from the parent's own hold date for as
    many years."""
    if entity.erase.strategy != "delete" or entity.hold is None or parent.hold is None:
        return False
    if entity.hold.with_ == parent_name:
        return True
    own = entity.hold.parent()
    return bool(own and own[0] == parent_name and not parent.hold.parent() and parent.hold.with_ is None
                and parent.hold.from_ == own[1] and parent.hold.years == entity.hold.years)


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
        for _, ref in entities[name].owners():
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
        identity_cols = [c for _, c in entity.identity_columns()]
        for column, ref in entity.relations():
            if identity_cols:
                out.append(f"entity {name}: reached through the relation {column} -> {ref.to} and holds identity "
                           f"columns ({', '.join(sorted(identity_cols))}): its rows name other people; "
                           "they are never learned from or changed for the related person")
        if entity.owners():
            unlearned = [c for t, c in entity.identity_columns() if t not in entity.learn]
            if unlearned:
                cols = ", ".join(unlearned)
                via = ", ".join(dict.fromkeys(c for c, _ in entity.owners()))
                out.append(f"entity {name}: owned through {via} and holds identity column(s) "
                           f"{cols} not in 'learn': an owned row whose {cols} names someone else is skipped; if they "
                           "are always the owner's own, list their types in 'learn'")
        held = sorted({r.entity for _, r in spec.held_parents(name)})
        if held and entity.hold is None and entity.erase.strategy != "keep":
            out.append(f"entity {name}: owned by {', '.join(held)}, whose rows may be held, and declares no hold: "
                       "its rows are kept (not written) while their owner is held; say so with "
                       f"hold: {{with: {held[0]}}}")
    for cycle in _reference_cycles(spec.entities):
        out.append(f"reference cycle {' -> '.join(cycle)}: relations could carry one person's identifiers to "
                   "another's rows; they are followed one hop and never teach")
    return out


def _reference_cycles(entities: dict[str, EntitySpec]) -> list[tuple[str, ...]]:
    """Cycles over every reference (only relations can form one), each once, from its smallest entity."""
    found: set[tuple[str, ...]] = set()

    def walk(start: str, here: str, path: tuple[str, ...]) -> None:
        for nxt in dict.fromkeys(ref.entity for _, ref in entities[here].links()):
            if nxt == start:
                found.add((*path, start))
            elif nxt not in path and nxt > start:
                walk(start, nxt, (*path, nxt))

    for name in sorted(entities):
        walk(name, name, (name,))
    return sorted(found)
