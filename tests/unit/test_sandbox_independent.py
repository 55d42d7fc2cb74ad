"""sandbox/ stays independent of the code it stands in front of (issue 17, point 5).

The simulators, sample databases and S3 launcher must import nothing from discovery/, connectors/
or workers/: a simulator that borrowed the connector's own helpers would share its mistakes, and
the tests driving one against the other could not catch them.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.import_graph import OUTSIDE, ROOT, imports

SANDBOX = ROOT / "sandbox"
FORBIDDEN = ("discovery", "connectors", "workers")


def forbidden_imports(source: str, path: Path) -> list[str]:
    """'file:line: imports X' for every import of discovery, connectors or workers, wherever it sits."""
    found = {}
    for line, module in imports(source, path):
        top = module.split(".")[0]
        if top in FORBIDDEN or top == OUTSIDE:
            found.setdefault(line, f"{path.relative_to(ROOT)}:{line}: imports {module}")
    return [found[line] for line in sorted(found)]


def sandbox_files() -> list[Path]:
    return sorted(SANDBOX.rglob("*.py"))


def test_sandbox_imports_nothing_of_the_code_it_stands_in_front_of() -> None:
    files = sandbox_files()
    assert len(files) >= 5, f"no sandbox modules found under {SANDBOX}"
    problems = [p for f in files for p in forbidden_imports(f.read_text(encoding="utf-8"), f)]
    assert not problems, "sandbox/ must not import discovery, connectors or workers:\n" + "\n".join(problems)


@pytest.mark.parametrize(("source", "line"), [
    ("import connectors", 1),
    ("import connectors.s3_files as s3", 1),
    ("import os, workers.cli", 1),
    ("from discovery.engine.datamap import SYSTEM_KEYS", 1),
    ("from connectors import s3_files", 1),
    ("def f():\n    from connectors.s3_files import KeyTemplate\n", 2),
    ("class C:\n    def m(self):\n        import workers\n", 3),
    ("try:\n    pass\nexcept ImportError:\n    from discovery import engine\n", 4),
    ("from .. import connectors", 1),
    ("from ..discovery.engine import datamap", 1),
    ("from ...elsewhere import thing", 1),
    ("import importlib\nmod = importlib.import_module('connectors.s3_files')", 2),
    ("mod = __import__('workers.demo')", 1),
])
def test_the_check_catches_every_import_form(source: str, line: int) -> None:
    found = forbidden_imports(source, SANDBOX / "example.py")
    assert len(found) == 1, found
    assert found[0].startswith(f"sandbox/example.py:{line}: imports "), found


@pytest.mark.parametrize("source", [
    "import os\nfrom sandbox.people import PEOPLE",
    "from . import people",
    "from .server import Served",
    "import connectorsx\nimport my_workers",
    "import sqlalchemy as sa\nfrom collections.abc import Mapping",
])
def test_the_check_leaves_other_imports_alone(source: str) -> None:
    assert forbidden_imports(source, SANDBOX / "example.py") == []


def test_launch_description_keys_match_the_data_map() -> None:
    """sandbox.launch keeps its own copy of the system description keys; it must not drift from discovery's."""
    from discovery.engine.datamap import SYSTEM_KEYS
    from sandbox.launch import DESCRIPTION_KEYS

    assert SYSTEM_KEYS | {"kind"} == DESCRIPTION_KEYS, "update DESCRIPTION_KEYS in sandbox/launch.py"
