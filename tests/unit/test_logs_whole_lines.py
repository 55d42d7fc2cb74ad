"""Worker processes share one stderr (`dsar worker --processes N`); each log line must reach it whole, also unbuffered
(PYTHONUNBUFFERED=1, as the Dockerfile sets it), where every write is a system call of its own: a line written as
text, then its newline, let another process's line land between the two."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINES = 3000
WRITER = f"""
import sys
from workers import logs
if sys.argv[1] == "plain":
    logs.configure_plain_logging("console", level=20)
else:
    logs.configure_logging("console", level=20)
log = logs.ProcessLogger("test")
for i in range({LINES}):
    log.info("line.written", writer=sys.argv[2], n=i, pad="x" * 40)
"""


@pytest.mark.parametrize("configure", ["structlog", "plain"])
def test_two_processes_sharing_stderr_write_whole_lines(tmp_path: Path, configure: str) -> None:
    out = tmp_path / "shared.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)}
    with out.open("wb") as shared:  # one open file, as a supervisor's children inherit it
        procs = [subprocess.Popen([sys.executable, "-c", WRITER, configure, name], stderr=shared, env=env, cwd=ROOT)
                 for name in ("a", "b")]
        assert [p.wait(timeout=120) for p in procs] == [0, 0]
    lines = out.read_text(encoding="utf-8").splitlines()
    # console lines end with the last key, sorted: ... n=7 pad=xxx... writer=a
    broken = [line for line in lines if line.count("line.written") != 1 or line.count("x" * 40) != 1
              or not line.endswith(("writer=a", "writer=b"))]
    assert broken == [] and len(lines) == 2 * LINES
    for name in ("a", "b"):
        assert sum(line.endswith(f"writer={name}") for line in lines) == LINES
