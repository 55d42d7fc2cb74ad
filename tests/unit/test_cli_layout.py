"""The `dsar` CLI package has no import cycle (issue 17, point 2).

workers/cli/common.py holds the `main` group and the shared helpers; every other module in
workers/cli/ (but __init__.py and __main__.py, which assemble and run it) is a command module.
A command module may import workers.cli.common and nothing else of the CLI package: not another
command module, not the package workers.cli itself (its __init__ imports the command modules).
common.py imports nothing of the CLI package. Every import counts, wherever it sits (lazy, in a
try, TYPE_CHECKING, importlib).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.import_graph import ROOT, imports

CLI = ROOT / "workers" / "cli"
PACKAGE = "workers.cli"
COMMON = "common"
ASSEMBLY = {"__init__", "__main__"}


def module_files() -> list[Path]:
    return sorted(CLI.glob("*.py"))


def command_modules() -> set[str]:
    return {p.stem for p in module_files()} - ASSEMBLY - {COMMON}


def bad_imports(source: str, path: Path) -> list[str]:
    """'file:line: imports X (why)' for every import of the CLI package other than workers.cli.common."""
    me = path.stem
    if me in ASSEMBLY:
        return []
    found = []
    for line, target in dict.fromkeys(imports(source, path)):
        if target == PACKAGE:
            why = "the package workers.cli, whose __init__ imports every command module"
        elif target.startswith(PACKAGE + "."):
            if target.split(".")[2] == COMMON:
                continue
            why = "another command module" if me != COMMON else "a command module"
        else:
            continue
        found.append(f"{path.relative_to(ROOT)}:{line}: imports {target} ({why}; import only workers.cli.common)")
    return found


def test_the_package_has_common_and_command_modules() -> None:
    assert (CLI / f"{COMMON}.py").is_file()
    assert (CLI / "__main__.py").is_file(), "`python -m workers.cli` needs workers/cli/__main__.py"
    assert len(command_modules()) >= 2, command_modules()


def test_no_cli_module_imports_a_command_module_or_the_package() -> None:
    problems = [p for f in module_files() for p in bad_imports(f.read_text(encoding="utf-8"), f)]
    assert not problems, "workers/cli/: command modules import only workers.cli.common:\n" + "\n".join(problems)


def test_the_package_imports_every_command_module() -> None:
    """A command module __init__ forgets to import registers nothing: its commands silently vanish."""
    init = CLI / "__init__.py"
    imported = {t.split(".")[2] for _, t in imports(init.read_text(encoding="utf-8"), init)
                if t.startswith(PACKAGE + ".")}
    assert command_modules() <= imported, f"{init.relative_to(ROOT)} must import {command_modules() - imported}"


@pytest.mark.parametrize("path", module_files(), ids=lambda p: p.name)
def test_every_cli_module_says_what_it_holds(path: Path) -> None:
    assert ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))), f"{path} needs an opening docstring"


@pytest.mark.parametrize(("module", "source", "line"), [
    ("requests", "import workers.cli", 1),
    ("requests", "import os, workers.cli.system", 1),
    ("requests", "import workers.cli.api as api", 1),
    ("requests", "from workers import cli", 1),
    ("requests", "from workers.cli import main", 1),
    ("requests", "from workers.cli import api", 1),
    ("requests", "from workers.cli import common, system", 1),
    ("requests", "from workers.cli.system import check_cmd", 1),
    ("requests", "from . import api", 1),
    ("requests", "from .system import check_cmd", 1),
    ("requests", "from .. import cli", 1),
    ("requests", "def f():\n    from workers.cli.api import serve_cmd\n", 2),
    ("requests", "try:\n    pass\nexcept ImportError:\n    from . import system\n", 4),
    ("requests", "import importlib\nmod = importlib.import_module('workers.cli.api')", 2),
    ("requests", "mod = __import__('workers.cli')", 1),
    ("common", "from workers.cli import requests", 1),
    ("common", "from .system import check_cmd", 1),
    ("common", "def f():\n    import workers.cli\n", 2),
])
def test_the_check_catches_every_import_form(module: str, source: str, line: int) -> None:
    found = bad_imports(source, CLI / f"{module}.py")
    assert len(found) == 1, found
    assert found[0].startswith(f"workers/cli/{module}.py:{line}: imports workers.cli"), found


@pytest.mark.parametrize(("module", "source"), [
    ("requests", "from workers.cli.common import main, fail"),
    ("requests", "import workers.cli.common"),
    ("requests", "from workers.cli import common"),
    ("requests", "from . import common\nfrom .common import emit"),
    ("requests", "from workers import app, demo\nfrom workers.inprocess import in_process_worker_if_embedded"),
    ("requests", "import click\nimport workersx.cli.api\nfrom workers.client import api"),
    ("common", "import click\nfrom discovery.engine import pipeline\nfrom workers import app"),
    ("__init__", "from workers.cli import api, requests, system\nfrom workers.cli.common import main"),
    ("__main__", "from workers.cli import main"),
])
def test_the_check_leaves_allowed_imports_alone(module: str, source: str) -> None:
    assert bad_imports(source, CLI / f"{module}.py") == []
