import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from connectors.base import PermanentError
from connectors.sql_map import parse_system
from discovery.engine.datamap import DataMapError, load_data_map

ROOT = Path(__file__).resolve().parents[2]
PROJECT_MAP = yaml.safe_load((ROOT / "config" / "datamap.yaml").read_text())


def accounts() -> dict[str, Any]:
    return copy.deepcopy(PROJECT_MAP["systems"]["accounts"])


def test_project_data_map_is_valid() -> None:
    dm = load_data_map(ROOT / "config" / "datamap.yaml")
    assert "accounts" in dm.systems
    spec = parse_system("accounts", dm.systems["accounts"].settings)
    assert spec.entities["orders"].hold is not None and spec.entities["orders"].hold.years == 5


@pytest.mark.parametrize(("mutate", "message"), [
    (lambda s: s["entities"]["servers"]["references"].update(user_id="people.id"),
     "entities.servers: Value error|unknown entity 'people'"),
    (lambda s: s["entities"]["users"]["erase"].update(strategy="shred"), "entities.users.erase.strategy"),
    (lambda s: s["entities"]["users"]["erase"].pop("mask"), "needs a 'mask' mapping"),
    (lambda s: s["entities"]["orders"].pop("restrict"), "'hold' needs 'restrict'"),
    (lambda s: s["entities"]["orders"]["hold"].update(years=0), "entities.orders.hold.years"),
    (lambda s: s["entities"]["users"]["erase"].update(strategy="delete", mask={}),
     "users is erased by delete, but"),
    (lambda s: s["entities"]["servers"].pop("references"), "needs 'identities' or 'references'"),
    (lambda s: s["entities"]["users"].update(references={"id": "login_log.id"}), "reference cycle"),
    (lambda s: s["entities"]["users"]["identities"].update(fax="fax"), "entities.users.identities.fax"),
    (lambda s: s["entities"]["users"].update(colour="blue"), "entities.users.colour"),
    # Whose rows (issue 9): learning needs an owner, relations are declared fully. (Several owners are
    # allowed since issue 10; a parent erased by delete still may not own rows that can stay.)
    (lambda s: s["entities"]["orders"]["references"].update(server_id="servers.id"),
     "entity servers is erased by delete, but orders references it and may keep rows"),
    (lambda s: s["entities"]["users"].update(learn=["phone"]), "'learn' needs an owning reference"),
    (lambda s: s["entities"]["orders"].update(learn=["phone"]), "learn: phone not in 'identities'"),
    (lambda s: s["entities"]["servers"]["references"].update(user_id={"to": "users.id"}),
     r"references.user_id.0.owner: Field required"),  # a list of references per column since issue 10
    (lambda s: s["entities"]["servers"]["references"].update(user_id={"to": "users.id", "owner": True,
                                                                       "export": True}),
     "'export' is for relations"),
    (lambda s: s["entities"]["servers"]["references"].update(user_id={"to": "users", "owner": False}),
     "must be 'entity.column'"),
])
def test_invalid_entries_name_the_key(mutate: Any, message: str) -> None:
    spec = accounts()
    mutate(spec)
    with pytest.raises(PermanentError) as err:
        parse_system("accounts", spec)
    assert err.value.system == "accounts"
    import re
    assert re.search(message, str(err.value)), str(err.value)


def test_file_level_errors(tmp_path: Path) -> None:
    path = tmp_path / "dm.yaml"
    path.write_text("systems: {x: {kind: ftp}}\ncontroller: {name: A, contact: b}\n")
    with pytest.raises(DataMapError, match=r"systems.x.kind: unknown kind 'ftp'"):
        load_data_map(path)
    path.write_text("systems: [\n")
    with pytest.raises(DataMapError, match=r"not valid YAML"):
        load_data_map(path)
    with pytest.raises(DataMapError, match=r"data map not found"):
        load_data_map(tmp_path / "missing.yaml")


def test_relations_may_point_back_and_the_risks_are_named() -> None:
    """A self-reference (referred_by) is a relation, not ownership: allowed, never a cycle error, and
    `dsar check` names it with the other shapes worth a second look."""
    from connectors.sql_map import risks

    spec = accounts()
    spec["entities"]["users"]["references"] = {"referred_by": {"to": "users.id", "owner": False}}
    spec["entities"]["orders"]["identities"] = {"phone": "contact_phone"}
    parsed = parse_system("accounts", spec)
    assert [(c, r.entity) for c, r in parsed.entities["users"].relations()] == [("referred_by", "users")]
    assert not parsed.entities["users"].owners()
    found = risks(parsed)
    assert any(r.startswith("entity users: reached through the relation referred_by") for r in found)
    assert any(r.startswith("entity orders: owned through user_id and holds identity column(s) contact_phone")
               for r in found)
    assert "reference cycle users -> users: relations could carry" in " ".join(found)
    assert risks(parse_system("accounts", accounts())) == []  # the project's own map has none of these


def shop(**changes: Any) -> dict[str, Any]:
    """A small foreign schema (issue 10): customers with two e-mail columns, addresses other tables point at,
    a composite-key table, a kept catalogue, held invoices with their lines."""
    entities: dict[str, Any] = {
        "customer": {"table": "customer", "identities": {"email": ["email", "alt_email"], "account_id": "id"},
                     "erase": {"strategy": "mask", "mask": {"email": "hash", "alt_email": "null"}}},
        "address": {"table": "address",
                    "references": {"id": ["customer.address_id", {"to": "employee.address_id", "owner": False}]},
                    "erase": {"strategy": "mask", "mask": {"street": "redact"}}},
        "employee": {"table": "employee", "identities": {"email": "email"},
                     "erase": {"strategy": "mask", "mask": {"email": "hash"}}},
        "order_item": {"table": "order_item", "primary_key": ["order_id", "item_no"],
                       "references": {"order_id": "customer.id"}, "erase": {"strategy": "delete"}},
        "product": {"table": "product", "references": {"id": "order_item.product_id"},
                    "erase": {"strategy": "keep", "reason": {"en": "our catalogue", "nb": "vår katalog"}}},
        "invoice": {"table": "invoice", "references": {"customer_id": "customer.id"}, "erase": {"strategy": "delete"},
                    "restrict": {"set": {"restricted": True}}, "lift": {"set": {"restricted": False}},
                    "hold": {"years": 5, "from": "invoice_date", "reason": "the Bookkeeping Act"}},
        "invoice_line": {"table": "invoice_line", "references": {"invoice_id": "invoice.id"},
                         "erase": {"strategy": "delete"}, "hold": {"with": "invoice"}},
    }
    for name, entity in changes.items():
        if entity is None:
            entities.pop(name)
        else:
            entities[name] = {**entities.get(name, {}), **entity}
    return {"kind": "sql", "url_env": "X", "entities": entities}


def test_real_schema_shapes_are_expressed() -> None:
    spec = parse_system("shop", shop())
    customer, address, item = spec.entities["customer"], spec.entities["address"], spec.entities["order_item"]
    assert item.key_columns() == ["order_id", "item_no"] and customer.key_columns() == ["id"]
    assert [(str(t), c) for t, c in customer.identity_columns()] == [
        ("email", "email"), ("email", "alt_email"), ("account_id", "id")]
    assert [(c, r.to, r.owner) for c, r in address.links()] == [
        ("id", "customer.address_id", True), ("id", "employee.address_id", False)]
    assert not spec.key_here("address", "id", address.owners()[0][1])  # the key is on customer
    assert spec.key_here("invoice", "customer_id", spec.entities["invoice"].owners()[0][1])
    assert {"order_id", "item_no", "email", "alt_email"} <= item.columns() | customer.columns()
    assert spec.entities["product"].erase.reason_text() == "our catalogue"
    line = spec.entities["invoice_line"]
    assert line.hold is not None and line.hold.with_ == "invoice" and line.restrict is None
    hold = spec.dated_hold("invoice_line")
    assert hold is not None and hold[0] == "invoice" and hold[1].years == 5
    assert [c for c, _ in spec.held_parents("invoice_line")] == ["invoice_id"]
    # several owners of one table are allowed (an address of customers and of orders)
    two = shop(address={"references": {"id": ["customer.address_id", "invoice.address_id"]}})
    assert parse_system("shop", two).entities["address"].owner_entities() == {"customer", "invoice"}


@pytest.mark.parametrize(("changes", "message"), [
    ({"order_item": {"primary_key": []}}, "order_item.primary_key: give one column, or a list of distinct"),
    ({"order_item": {"primary_key": ["order_id", "order_id"]}}, "a list of distinct columns"),
    ({"customer": {"identities": {"email": ["email", "email"]}}}, "a column holds one identity type"),
    ({"customer": {"identities": {"email": []}}}, "each identity type names a column"),
    ({"address": {"references": {"id": []}}}, "reference id: an empty list"),
    ({"product": {"erase": {"strategy": "keep"}}}, "strategy 'keep' needs a 'reason'"),
    ({"product": {"erase": {"strategy": "keep", "reason": "ok"}}}, "give the reason in words"),
    ({"customer": {"erase": {"strategy": "mask", "mask": {"email": "hash"}, "reason": "because"}}},
     "'reason' is only allowed with strategy 'keep'"),
    ({"product": {"erase": {"strategy": "keep", "reason": "ours", "mask": {"name": "null"}}}},
     "'mask' is only allowed with strategy 'mask'"),
    ({"product": {"hold": {"with": "order_item"}}}, "strategy 'keep' never erases"),
    ({"invoice_line": {"hold": {"with": "customer"}}}, "hold.with 'customer' is not an entity this one references"),
    ({"invoice_line": {"hold": {"with": "invoice", "years": 5}}}, "'with' takes the parent's hold"),
    ({"invoice_line": {"hold": {"years": 5}}}, "a hold needs 'years', 'from' and 'reason'"),
    ({"invoice": {"hold": None, "restrict": None, "lift": None}},
     "entity invoice_line: hold.with 'invoice' names an entity that has no hold"),
    ({"invoice_line": {"hold": None, "erase": {"strategy": "mask", "mask": {"amount": "null"}}}},
     "entity invoice is erased by delete, but invoice_line references it and may keep rows \\(mask strategy\\)"),
    # the key is on customer: deleting the address under a customer row that stays breaks it
    ({"address": {"erase": {"strategy": "delete"}}},
     "entity address is erased by delete, but customer.address_id points at it and customer keeps its rows"),
])
def test_shape_errors_name_the_entity_and_key(changes: dict[str, Any], message: str) -> None:
    import re

    with pytest.raises(PermanentError) as err:
        parse_system("shop", shop(**changes))
    assert re.search(message, str(err.value)), str(err.value)


def test_a_child_of_a_held_table_that_declares_no_hold_is_named() -> None:
    from connectors.sql_map import risks

    spec = shop(invoice_line={"hold": None})
    spec["entities"]["invoice_line"].pop("hold")
    found = risks(parse_system("shop", spec))
    assert any(r.startswith("entity invoice_line: owned by invoice, whose rows may be held, and declares no hold")
               for r in found), found
    assert not any("invoice_line: owned by" in r for r in risks(parse_system("shop", shop())))
