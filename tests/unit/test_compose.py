"""docker-compose.yml and the Dockerfile stay true to the code (no Docker engine here, so read, not run).

Every dsar service runs a command the CLI accepts; every DSAR_* variable it sets is a settings key or a
secret the settings or the data map name, and every such secret can be set; the settings load from that
environment; the image holds every package the wheel ships and starts the console script.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import click
import yaml

from discovery.engine.settings import Settings, load_settings
from workers.cli import main

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
DSAR_SERVICES = {name: s for name, s in COMPOSE["services"].items() if s.get("build")}
DSAR_ENV: dict[str, str] = COMPOSE["x-dsar"]["environment"]


def _secrets_named(node: Any) -> set[str]:
    """Values of every `*_env` key, at any depth: the variables that hold secrets."""
    if isinstance(node, dict):
        out = {v for k, v in node.items() if k.endswith("_env") and isinstance(v, str) and v}
        return out.union(*(_secrets_named(v) for v in node.values()))
    if isinstance(node, list):
        return set().union(*(_secrets_named(v) for v in node))
    return set()


SECRETS = _secrets_named(tomllib.loads((ROOT / "config" / "dsar.toml").read_text())) | _secrets_named(
    yaml.safe_load((ROOT / "config" / "datamap.yaml").read_text()))


def _override_names() -> set[str]:
    names = {"DSAR_LOG_FORMAT"}
    for section, info in Settings.model_fields.items():
        model = info.annotation
        if isinstance(model, type) and hasattr(model, "model_fields"):
            names |= {f"DSAR_{section}_{key}".upper() for key in model.model_fields}
    return names


def _interpolated(value: str) -> str:
    """Compose's ${VAR:?msg} and ${VAR:-default}, as a user's .env would fill them (a placeholder when required)."""
    return re.sub(r"\$\{(\w+)(?::\?[^}]*|:-([^}]*))?\}",
                  lambda m: m.group(2) if m.group(2) is not None else "x" * 32, value)


def test_every_dsar_service_runs_a_command_the_cli_accepts() -> None:
    assert {"migrate", "worker", "api"} <= set(DSAR_SERVICES)
    for name, service in DSAR_SERVICES.items():
        args = list(service["command"])
        command = main.get_command(click.Context(main), args[0])
        assert command is not None, f"service {name}: 'dsar {args[0]}' is not a command"
        command.make_context(args[0], args[1:])  # raises on an unknown option or a bad value


def test_every_variable_is_a_setting_or_a_named_secret_and_every_secret_can_be_set() -> None:
    unknown = sorted(set(DSAR_ENV) - _override_names() - SECRETS)
    assert not unknown, f"docker-compose.yml sets variables dsar never reads: {unknown}"
    missing = sorted(v for v in SECRETS if v not in DSAR_ENV)
    assert not missing, f"secrets named in config/ that docker-compose.yml gives no way to set: {missing}"


def test_the_settings_load_from_the_compose_environment() -> None:
    env = {k: _interpolated(str(v)) for k, v in DSAR_ENV.items()}
    settings = load_settings(ROOT / "config" / "dsar.toml", env)
    assert settings.broker.url == "redis://redis:6379/0" and settings.ledger.url.startswith("postgresql+psycopg://")
    assert str(settings.archive.path) == "/var/dsar/archive"


def test_the_image_holds_every_package_and_starts_dsar() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    copied = set(re.findall(r"^COPY (\S+) ", dockerfile, re.M))
    packages = set(PYPROJECT["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"])
    assert packages | {"config"} <= copied, f"the Dockerfile does not copy {packages | {'config'} - copied}"
    assert 'ENTRYPOINT ["dsar"]' in dockerfile and "dsar" in PYPROJECT["project"]["scripts"]
