"""The dependency rule of docs/architecture.md, checked over every import (top-level, lazy or TYPE_CHECKING).

workers -> discovery.* -> connectors; inside discovery: schedule -> intake -> mapping -> engine -> bundle -> i18n;
a module whose name starts with `_` is private to its package; connectors know nothing of discovery.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.import_graph import ROOT, imports, module_name

# Lower rank may be imported by higher rank, never the other way.
TOP = {"connectors": 0, "discovery": 1, "workers": 2}
DOMAIN = {"i18n": 0, "bundle": 1, "engine": 2, "mapping": 3, "intake": 4, "schedule": 5}


def sources(*tops: str) -> list[Path]:
    return sorted(p for top in tops for p in (ROOT / top).rglob("*.py") if "migrations" not in p.parts)


def violations(path: Path) -> Iterator[str]:
    me = module_name(path, ROOT)
    my_top = me.split(".")[0]
    for line, target in imports(path.read_text(encoding="utf-8"), path, ROOT):
        where = f"{path.relative_to(ROOT)}:{line} imports {target}"
        top = target.split(".")[0]
        if top in TOP and my_top in TOP and TOP[top] > TOP[my_top]:
            yield f"{where}: {my_top} may not import {top} (arrows point workers -> discovery -> connectors)"
        if my_top == "discovery" and top == "discovery":
            mine, theirs = _domain(me), _domain(target)
            if mine and theirs and DOMAIN[theirs] > DOMAIN[mine]:
                yield (f"{where}: discovery.{mine} may not import discovery.{theirs} "
                       "(schedule -> intake -> mapping -> engine -> bundle -> i18n)")
        private = [i for i, part in enumerate(target.split(".")) if part.startswith("_") and part != "__init__"]
        if private and top in TOP:
            owner = ".".join(target.split(".")[: private[0]])
            if not (me == owner or me.startswith(owner + ".")):
                yield f"{where}: a private module of {owner}"


def _domain(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in DOMAIN else None


@pytest.mark.parametrize("path", sources("connectors", "discovery", "workers"), ids=lambda p: module_name(p, ROOT))
def test_imports_follow_the_layers(path: Path) -> None:
    assert list(violations(path)) == []


def test_every_domain_package_says_what_it_may_import() -> None:
    for name in DOMAIN:
        init = ROOT / "discovery" / name / "__init__.py"
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        assert "import" in doc, f"{init} needs a docstring saying what the package holds and may import"


def test_the_checker_catches_each_kind_of_violation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The rule must be able to fail: plant one file of each wrong kind in a copy of the layout."""
    packages = ("connectors", "discovery", "discovery/bundle", "discovery/engine", "discovery/engine/_inner", "workers")
    for pkg in packages:
        (tmp_path / pkg).mkdir(parents=True, exist_ok=True)
        (tmp_path / pkg / "__init__.py").write_text("")
    (tmp_path / "discovery/engine/_inner/x.py").write_text("")
    (tmp_path / "discovery/engine/pipeline.py").write_text("")
    planted = {
        "connectors/bad.py": "from discovery.engine import pipeline\n",
        "discovery/bundle/bad.py": "def f():\n    from discovery.engine import pipeline\n",
        "discovery/engine/bad.py": "import workers\n",
        "workers/bad.py": "from discovery.engine._inner import x\n",
        "discovery/engine/fine.py": "from . import pipeline\nfrom ._inner import x\nimport connectors\n",
    }
    for rel, text in planted.items():
        (tmp_path / rel).write_text(text)
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    found = {rel: list(violations(tmp_path / rel)) for rel in planted}
    assert all(found[rel] for rel in planted if "bad" in rel), found
    assert found["discovery/engine/fine.py"] == []
