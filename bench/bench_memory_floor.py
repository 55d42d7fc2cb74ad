"""Memory floor: what the libraries dsar's long-running processes are built on hold before any dsar code runs.

    .venv/bin/python bench/bench_memory_floor.py                       # a table, and the shape's sum
    .venv/bin/python bench/bench_memory_floor.py --fides-rss 1265      # with the peer's peak RSS: the 5x line
    .venv/bin/python bench/bench_memory_floor.py --json

Each process kind is a fresh interpreter (this venv's Python) that imports only the third-party modules that kind of
dsar process imports (the design card's stack: SQLAlchemy with its ORM, psycopg, pydantic, redis, Dramatiq; the API
adds FastAPI and uvicorn), then reports its resident set (VmRSS), three times, the lowest kept. A floor, so it errs
low: every module listed is one that kind of process holds once it runs (tests/unit/test_import_footprint.py checks
that), and not every one it holds is listed. `rich` is refused as dsar's processes refuse it
(workers/logs.refuse_rich). The sum is taken for the side-by-side harness's shape
(../shared/peers/fides: `dsar serve` plus `dsar worker --processes 2`, i.e. the API, a supervisor and two worker
processes) and compared with what dsar's own processes hold (`bench_shape.py` measures those).

Issue 15 asked for a fifth of Fides' memory, summed RSS of every process: this shows how little of that fifth the
libraries leave for dsar's own code and working memory in four processes. A benchmark, not a test: it writes down
what it measures.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
from typing import Any

STACK = {
    # the supervisor imports none of these (workers/supervisor.py): its floor is the interpreter itself
    "supervisor": [],
    "worker": ["sqlalchemy", "sqlalchemy.orm", "sqlalchemy.dialects.postgresql.psycopg", "psycopg", "pydantic",
               "redis", "dramatiq", "dramatiq.brokers.redis", "structlog", "orjson", "yaml"],
    "api": ["sqlalchemy", "sqlalchemy.orm", "sqlalchemy.dialects.postgresql.psycopg", "psycopg", "pydantic",
            "redis", "dramatiq", "dramatiq.brokers.redis", "structlog", "orjson", "yaml", "fastapi", "uvicorn"],
}
SHAPE = {"api": 1, "supervisor": 1, "worker": 2}  # dsar serve + dsar worker --processes 2

_PROBE = """
import importlib, sys
sys.modules.setdefault("rich", None)
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
bare = rss()
for name in sys.argv[1:]:
    importlib.import_module(name)
print(bare, rss())
"""


def probe(modules: list[str]) -> tuple[int, int]:
    """(KiB at start, KiB after importing `modules`) of a fresh interpreter."""
    out = subprocess.run([sys.executable, "-P", "-c", _PROBE, *modules], capture_output=True, text=True, check=True)
    bare, loaded = out.stdout.split()
    return int(bare), int(loaded)


def measure(repeat: int = 3) -> dict[str, Any]:
    kinds: dict[str, Any] = {}
    for kind, modules in STACK.items():
        runs = [probe(modules) for _ in range(repeat)]
        kinds[kind] = {"modules": modules, "interpreter_mib": round(min(r[0] for r in runs) / 1024, 1),
                       "floor_mib": round(min(r[1] for r in runs) / 1024, 1)}
    total = sum(kinds[k]["floor_mib"] * n for k, n in SHAPE.items())
    return {"python": platform.python_version(), "machine": platform.machine(), "kinds": kinds, "shape": SHAPE,
            "shape_floor_mib": round(total, 1)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--fides-rss", type=float, default=0.0,
                    help="the peer's peak RSS, all processes, MiB (from a side-by-side run's table.md)")
    ap.add_argument("--ratio", type=float, default=5.0, help="the goal: dsar's memory at most 1/RATIO of the peer's")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    rep = measure()
    if args.fides_rss:
        rep["goal_mib"] = round(args.fides_rss / args.ratio, 1)
        rep["floor_ratio"] = round(args.fides_rss / rep["shape_floor_mib"], 2)
    if args.json:
        print(json.dumps(rep, indent=2))
        return 0
    print(f"Python {rep['python']} ({rep['machine']}); RSS after importing the stack alone, MiB:")
    for kind, k in rep["kinds"].items():
        print(f"  {kind:10s} {k['floor_mib']:6.1f}  (interpreter {k['interpreter_mib']:.1f}; "
              f"{', '.join(k['modules']) or 'nothing more'})")
    shape = " + ".join(f"{n} x {k}" for k, n in SHAPE.items())
    print(f"the harness's shape ({shape}): {rep['shape_floor_mib']:.1f} MiB before any dsar code or request")
    if args.fides_rss:
        print(f"goal at {args.ratio:g}x of {args.fides_rss:g} MiB: {rep['goal_mib']:.1f} MiB; "
              f"the floor alone is {rep['floor_ratio']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
