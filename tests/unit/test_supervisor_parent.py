"""Issue 15: the long-running `dsar worker` supervisor (what the CLI execs into once it has checked the settings)
imports only what supervising needs, so it stays small; tests/integration/test_supervisor.py checks a real one."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT
from workers import supervisor

HEAVY = ("sqlalchemy", "boto3", "botocore", "fastapi", "starlette", "pydantic", "psycopg", "dramatiq", "redis",
         "discovery", "workers.cli", "workers.app",
         # structlog imports asyncio (and ssl) and rich: the supervisor logs through workers.logs' plain renderer
         "structlog", "rich", "pygments", "asyncio", "ssl")


def test_the_parent_mode_imports_nothing_heavy() -> None:
    # What `python -m workers.supervisor --parent` imports before it supervises: the module and parent_main's own.
    code = ("import sys, workers.supervisor as s, workers.logs; "
            "s._parse(['--parent', '--processes', '2', '--threads', '4']); "
            "workers.logs.configure_plain_logging(level=20); "
            "s.log.info('supervisor.started', processes=2); "
            "print(' '.join(sorted(sys.modules)))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    loaded = done.stdout.split()
    assert "workers.supervisor" in loaded and "supervisor.started" in done.stderr
    assert [m for m in loaded if any(m == h or m.startswith(f"{h}.") for h in HEAVY)] == []


def test_the_parent_command_line_carries_what_the_cli_decided() -> None:
    argv = supervisor.parent_argv(3, 5, "json", "0.0.0.0", 9191)
    assert argv[:4] == [sys.executable, "-m", "workers.supervisor", "--parent"]
    args = supervisor._parse(argv[3:])
    assert (args.parent, args.child, args.processes, args.threads, args.log_format) == (True, False, 3, 5, "json")
    assert (args.metrics_host, args.metrics_port) == ("0.0.0.0", 9191)
    assert "--metrics-port" not in supervisor.parent_argv(1, 1, "console")  # off: no metrics server at all
