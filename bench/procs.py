"""What the benchmarks read from /proc (Linux): process trees, their CPU and memory, the machine's CPU and load.

Shared by bench_backbone.py and bench_shape.py (as the peer harness's proctree.py reads them), so both count a
process tree's CPU and memory the same way.
"""

from __future__ import annotations

import os
from pathlib import Path

CLK = os.sysconf("SC_CLK_TCK")


def stat_fields(pid: int) -> list[str]:
    """/proc/PID/stat after the command name (state, ppid, ...: field 3 onwards), [] when the process is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return []
    return text[text.rindex(")") + 2:].split()


def tree(roots: list[int]) -> list[int]:
    """The live processes among `roots` and all their descendants."""
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (f := stat_fields(int(entry))):
            kids.setdefault(int(f[1]), []).append(int(entry))
    out, todo = [], [r for r in roots if os.path.exists(f"/proc/{r}")]
    while todo:
        out.append(p := todo.pop())
        todo.extend(kids.get(p, []))
    return out


def cpu_seconds(pids: list[int]) -> float:
    """utime+stime of these processes plus cutime+cstime (their children that exited and were reaped)."""
    return sum(sum(int(x) for x in f[11:15]) for f in map(stat_fields, pids) if f) / CLK


def proc_kb(pid: int, file: str, key: str) -> int:
    """A `Key: N kB` line of /proc/PID/<file> (status: VmRSS, VmHWM; smaps_rollup: Pss), 0 when missing."""
    try:
        with open(f"/proc/{pid}/{file}") as fh:
            return next((int(line.split()[1]) for line in fh if line.startswith(key + ":")), 0)
    except OSError:
        return 0


def cmdline(pid: int, drop: str = "") -> str:
    """The process's command line, `drop` (a checkout's path) removed, cut to 100 characters; '' when gone."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""
    return (raw.replace(drop, "") if drop else raw)[:100]


def machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of all CPUs since boot (idle and iowait are not busy)."""
    vals = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return (sum(vals) - vals[3] - vals[4]) / CLK, sum(vals) / CLK


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])
