"""`dsar` commands for the api part (registered on workers.cli.main)."""

from __future__ import annotations

from workers.cli import main  # noqa: F401  (commands are added to this group)
