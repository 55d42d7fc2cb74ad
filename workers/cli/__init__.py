"""The `dsar` command line (click): this package assembles it.

    common.py    the `main` group and what the commands share (exit codes, errors, runtime, output, waiting)
    requests.py  request, status, download, confirm
    lifecycle.py requests (the list), deny, cancel, retry, audit
    system.py    check, worker, sweep, db-upgrade, demo
    api.py       serve, token, overdue, identity-verified, extend
    bundles.py   verify, bundles expire, link
    schedule.py  scheduler, account-deleted, schedule list/cancel, sweep-inactive, sweep-marketing
    retention.py retention plan, run, report, confirm
    mapping.py   datamap scan, datamap diff

Each command module imports `workers.cli.common` and registers its commands on `main` when imported;
none imports another command module, and common imports none of them (tests/unit/test_cli_layout.py).
Importing this package imports them all, so `workers.cli:main` (the console script) and
`python -m workers.cli` see every command.
"""

from workers.cli import api, bundles, ledger, lifecycle, mapping, requests, retention, ropa, schedule, system  # noqa: F401  (register their commands)
from workers.cli.common import main

__all__ = ["main"]
