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
