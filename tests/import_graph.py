"""Every import a Python file makes, as absolute module names: the one reader behind the layout tests
(test_layers.py, test_cli_layout.py, test_sandbox_independent.py).

Counts every form wherever it sits (top level, inside a function or a try, under TYPE_CHECKING):
`import a.b`, `from a import b` (a.b when b is a module or package under the root, else a), relative
imports resolved from the file's package (beyond the root: `<outside>.x`), and
`importlib.import_module("x")` / `__import__("x")` with a constant name.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DYNAMIC_IMPORTERS = {"import_module", "__import__"}
OUTSIDE = "<outside>"


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def is_module(name: str, root: Path = ROOT) -> bool:
    path = root.joinpath(*name.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def imports(source: str, path: Path, root: Path = ROOT) -> Iterator[tuple[int, str]]:
    """(line, absolute module) for every import in `source`, the text of the file at `path` under `root`."""
    package = list(path.relative_to(root).parent.parts)
    for node in ast.walk(ast.parse(source, filename=str(path))):
        line = getattr(node, "lineno", 0)
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield line, alias.name
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                up = node.level - 1
                if up > len(package):
                    yield line, f"{OUTSIDE}.{module}".rstrip(".")
                    continue
                module = ".".join([*package[: len(package) - up], *([module] if module else [])])
            for alias in node.names:
                name = f"{module}.{alias.name}".lstrip(".")
                yield line, name if is_module(name, root) else module
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
            if called in DYNAMIC_IMPORTERS:
                yield line, node.args[0].value
