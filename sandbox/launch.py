"""Run the four vendor simulators together on 127.0.0.1 and write a data map pointing at them.

    with Sandbox(directory=tmp_path) as sb:
        os.environ.update(sb.env())
        os.environ["DSAR_DATA_MAP_PATH"] = str(sb.datamap_path)
        ...  # dsar now reaches accounts (DSAR_ACCOUNTS_DB_URL) and FreshChat, Mautic, SALESmanago, Matomo

The data map is a copy of config/datamap.yaml in which every vendor system is enabled and its
connector settings are the simulator's own (`sim.settings(url)`); what the person is told
(title, purpose, legal basis, ...) and `kind` stay as in the project's map. The SQL system is
copied unchanged: its database is the caller's (see sandbox.accounts_db).

`latency_s` / `rate_per_second` put each simulator behind sandbox.server.Throttle (the benchmark);
`.throttles[name].stats` then counts calls and the 429s sent.

For trying things by hand:  .venv/bin/python -m sandbox.launch --port-base 18700
"""

from __future__ import annotations

import argparse
import contextlib
import shlex
import shutil
import signal
import tempfile
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

import yaml

from sandbox.freshchat import FreshchatSim
from sandbox.matomo import MatomoSim
from sandbox.mautic import MauticSim
from sandbox.salesmanago import SalesmanagoSim
from sandbox.server import Served, Throttle, WSGIApp

PROJECT_DATAMAP = Path(__file__).resolve().parent.parent / "config" / "datamap.yaml"
VENDORS = ("freshchat", "mautic", "salesmanago", "matomo")  # system names in the project's data map
# The keys of a system entry that describe it (what the person is told) rather than configure its
# connector; kept from the project's map, everything else is replaced by the simulator's settings.
# A copy of discovery.engine.datamap's SYSTEM_KEYS plus `kind`: the sandbox imports nothing from the
# code it stands in front of, so a mistake there cannot hide in the data map written here.
# tests/unit/test_sandbox_independent.py checks the copy against the original.
DESCRIPTION_KEYS = frozenset({"kind", "enabled", "title", "purpose", "legal_basis", "retention", "processors",
                              "location", "source", "holds", "data_subjects", "data_categories", "recipients",
                              "transfers"})
# A connector setting kept from the project's map too: its retention promises (docs/retention.md), so the demo's
# `dsar retention plan|run|report` shows the project's own rules against the simulators.
PROMISE_KEYS = frozenset({"retention_rules"})


class Sim(Protocol):
    writes: list[tuple[str, str]]

    def seed_demo(self) -> None: ...
    def settings(self, base_url: str) -> dict[str, Any]: ...
    def env(self) -> dict[str, str]: ...
    def holdings(self, email: str) -> dict[str, int]: ...
    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any: ...


def make_sims() -> dict[str, Sim]:
    return {"freshchat": FreshchatSim(), "mautic": MauticSim(), "salesmanago": SalesmanagoSim(),
            "matomo": MatomoSim()}


class Sandbox:
    """The four simulators, served; `.datamap_path`, `.env()`, `.sims`, `.urls`, `.throttles`, `.stop()`."""

    def __init__(
        self,
        directory: str | Path | None = None,
        *,
        seed: bool = True,
        latency_s: float = 0.0,
        rate_per_second: int | None = None,
        port_base: int | None = None,
        connector_settings: Mapping[str, Any] | None = None,
        system_settings: Mapping[str, Mapping[str, Any]] | None = None,
        source_datamap: Path = PROJECT_DATAMAP,
    ) -> None:
        """`connector_settings` are added to every vendor system's settings, `system_settings[name]` to one's."""
        self._own_dir = directory is None
        self.directory = Path(directory) if directory is not None else Path(tempfile.mkdtemp(prefix="dsar-sandbox-"))
        self.directory.mkdir(parents=True, exist_ok=True)
        self.sims: dict[str, Sim] = make_sims()
        self.throttles: dict[str, Throttle] = {}
        self.served: dict[str, Served] = {}
        self.urls: dict[str, str] = {}
        try:
            for n, (name, sim) in enumerate(self.sims.items()):
                if seed:
                    sim.seed_demo()
                app: WSGIApp = sim
                if latency_s or rate_per_second:
                    app = self.throttles[name] = Throttle(sim, latency_s=latency_s, rate_per_second=rate_per_second)
                served = Served(app, port=port_base + n if port_base is not None else 0)
                self.served[name] = served
                self.urls[name] = served.url
            self.datamap_path = self.directory / "datamap.yaml"
            self.datamap_path.write_text(self._datamap(source_datamap, connector_settings or {},
                                                       system_settings or {}), encoding="utf-8")
        except BaseException:
            self.stop()
            raise

    def _datamap(self, source: Path, common: Mapping[str, Any], per_system: Mapping[str, Mapping[str, Any]]) -> str:
        raw = yaml.safe_load(source.read_text(encoding="utf-8"))
        systems: dict[str, dict[str, Any]] = raw["systems"]
        for name, sim in self.sims.items():
            entry = systems.get(name)
            if entry is None:
                raise KeyError(f"{source} has no system '{name}'")
            kept = {k: v for k, v in entry.items() if k in DESCRIPTION_KEYS | PROMISE_KEYS}
            systems[name] = {**kept, "enabled": True, **sim.settings(self.urls[name]), **common,
                             **per_system.get(name, {})}
        header = (f"# Written by sandbox.launch from {source.name}: the vendor systems point at local simulators.\n")
        return header + yaml.safe_dump(raw, sort_keys=False, allow_unicode=True, width=1000)

    def env(self) -> dict[str, str]:
        """Every simulator's credentials, under the variable names its settings use."""
        merged: dict[str, str] = {}
        for sim in self.sims.values():
            merged.update(sim.env())
        return merged

    def writes(self) -> dict[str, list[tuple[str, str]]]:
        """Each simulator's state-changing calls so far, as (call, the vendor's id of the record), in order."""
        return {name: list(sim.writes) for name, sim in self.sims.items()}

    def holdings(self, email: str) -> dict[str, dict[str, int]]:
        """What each simulator still holds about the person seeded under `email`, non-zero kinds only."""
        return {name: {k: n for k, n in sim.holdings(email).items() if n} for name, sim in self.sims.items()}

    def stop(self) -> None:
        for served in self.served.values():
            served.stop()
        self.served = {}
        if self._own_dir:
            shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sandbox.launch",
                                     description="Serve the four vendor simulators until Ctrl-C.")
    parser.add_argument("--port-base", type=int, default=18700,
                        help="FreshChat on this port, Mautic +1, SALESmanago +2, Matomo +3 (0: any free ports)")
    parser.add_argument("--dir", default="var/sandbox", help="where to write the data map (default var/sandbox)")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added to every call")
    parser.add_argument("--rate", type=int, default=None, help="requests per second before answering 429")
    args = parser.parse_args(argv)
    with Sandbox(Path(args.dir).resolve(), latency_s=args.latency, rate_per_second=args.rate,
                 port_base=args.port_base or None) as sb:
        for name, url in sb.urls.items():
            print(f"# {name:<12} {url}")
        print("# Export these, then run dsar (the account database is DSAR_ACCOUNTS_DB_URL, yours to seed):")
        for key, value in {**sb.env(), "DSAR_DATA_MAP_PATH": str(sb.datamap_path)}.items():
            print(f"export {key}={shlex.quote(value)}")
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        with contextlib.suppress(KeyboardInterrupt):
            stop.wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
