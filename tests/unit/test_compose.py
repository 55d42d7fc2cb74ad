"""docker-compose.yml, the Dockerfile and .dockerignore stay true to the code (no Docker engine here: read, not run).

The stack keeps every promise: API, workers and the scheduler (which runs the periodic sweeps) each run a command the
CLI accepts; every variable the settings and the data map name is passed through and none is unknown; config/ is
mounted, not baked; the healthchecks run real code (the worker's reads its namespace's beats on either broker);
RabbitMQ is offered as a profile; the S3 server is pinned, signed, unpublished and the archive;
images are pinned; the image is a non-editable install run as a non-root user; the build context leaves .venv out.
"""

from __future__ import annotations

import os
import re
import socket
import time
import tomllib
from pathlib import Path
from typing import Any

import click
import pytest
import yaml

from discovery.engine.settings import environment_variables, load_settings, override_variables
from workers import heartbeat
from workers.cli import main

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
DSAR_SERVICES = {name: s for name, s in SERVICES.items() if s.get("build")}
DSAR_ENV: dict[str, str] = COMPOSE["x-dsar"]["environment"]
DOCKERFILE = (ROOT / "Dockerfile").read_text()


def _interpolated(value: str, env: dict[str, str] | None = None) -> str:
    """Compose's ${VAR:?msg}, ${VAR:-default} and ${VAR:+alt}, as an .env would fill them (a placeholder when
    required; `env` holds what the .env sets)."""
    env = env or {}

    def one(m: re.Match[str]) -> str:
        name, op, arg = m.group(1), m.group(2), m.group(3) or ""
        if op == ":?":
            return env.get(name) or "x" * 32
        if op == ":+":
            return arg if env.get(name) else ""
        return env.get(name) or (arg if op == ":-" else "")

    return re.sub(r"\$\{(\w+)(?:(:[?+-])([^}]*))?\}", one, value)


def test_the_stack_has_its_services_and_each_dsar_service_runs_a_command_the_cli_accepts() -> None:
    assert {"postgres", "redis", "s3", "migrate", "worker", "scheduler", "api", "proxy"} <= set(SERVICES)
    assert {"migrate", "worker", "scheduler", "api"} <= set(DSAR_SERVICES)
    for name, service in DSAR_SERVICES.items():
        args = list(service["command"])
        command = main.get_command(click.Context(main), args[0])
        assert command is not None, f"service {name}: 'dsar {args[0]}' is not a command"
        command.make_context(args[0], args[1:])  # raises on an unknown option or a bad value


def test_the_scheduler_runs_the_periodic_jobs() -> None:
    args = SERVICES["scheduler"]["command"]
    assert "--once" not in args and "--no-periodic" not in args  # the loop runs them by default


def test_every_variable_the_settings_and_data_map_name_is_passed_and_none_is_unknown() -> None:
    named = environment_variables(ROOT / "config" / "dsar.toml")
    missing = sorted(set(named) - set(DSAR_ENV))
    assert not missing, f"docker-compose.yml gives no way to set: {[f'{v} ({named[v]})' for v in missing]}"
    unknown = sorted(set(DSAR_ENV) - override_variables() - set(named))
    assert not unknown, f"docker-compose.yml sets variables dsar never reads: {unknown}"
    for name, service in DSAR_SERVICES.items():
        assert service["environment"] == DSAR_ENV, f"service {name} has an environment of its own"


def test_the_settings_load_from_the_compose_environment() -> None:
    env = {k: _interpolated(str(v)) for k, v in DSAR_ENV.items()}
    settings = load_settings(ROOT / "config" / "dsar.toml", env)  # the mounted file is this one
    assert settings.broker.url == "redis://redis:6379/0" and settings.ledger.url.startswith("postgresql+psycopg://")
    assert settings.archive.store == "s3" and settings.archive.endpoint_url == "http://s3:8333"
    assert settings.archive.bucket == "dsar-bundles"
    assert settings.schedule.outbox_path == Path("/var/dsar/outbox") and settings.schedule.notifier == "outbox"
    assert settings.schedule.smtp_user_env == "" and settings.schedule.webhook_token_env == ""  # off until set
    assert settings.api.public_url is None and settings.api.download_redirect is False
    with_login = {k: _interpolated(str(v), {"DSAR_SMTP_USER": "u", "DSAR_SMTP_PASSWORD": "p",
                                            "DSAR_API_PUBLIC_URL": "https://dsar.example.com"})
                  for k, v in DSAR_ENV.items()}
    settings = load_settings(ROOT / "config" / "dsar.toml", with_login)
    assert (settings.schedule.smtp_user_env, settings.schedule.smtp_password_env) == ("DSAR_SMTP_USER",
                                                                                      "DSAR_SMTP_PASSWORD")
    assert settings.api.public_url == "https://dsar.example.com"


def test_config_is_mounted_not_baked_and_state_lives_on_the_volume() -> None:
    assert DSAR_ENV["DSAR_CONFIG"] == "/etc/dsar/dsar.toml"
    for name, service in DSAR_SERVICES.items():
        assert "./config:/etc/dsar:ro" in service["volumes"], f"service {name} does not mount config/"
        assert "dsar-data:/var/dsar" in service["volumes"]
    for key in ("DSAR_ARCHIVE_PATH", "DSAR_ARCHIVE_STAGING_PATH", "DSAR_SCHEDULE_OUTBOX_PATH"):
        assert DSAR_ENV[key].startswith("/var/dsar/"), f"{key} is not an absolute path on the volume"
    mounted = {v.split(":")[0] for s in SERVICES.values() for v in s.get("volumes", []) if not v.startswith(".")}
    assert mounted <= set(COMPOSE["volumes"]), f"undeclared volumes: {mounted - set(COMPOSE['volumes'])}"
    for path in (v.split(":")[0] for s in SERVICES.values() for v in s.get("volumes", []) if v.startswith(".")):
        assert (ROOT / path).exists(), f"{path} is mounted but not in the checkout"


def test_s3_is_pinned_signed_internal_and_the_archive() -> None:
    s3 = SERVICES["s3"]
    assert "ports" not in s3, "the S3 server must not be published"
    assert s3["networks"] == ["backend"] and COMPOSE["networks"]["backend"]["internal"] is True
    assert all(":?" in s3["environment"][k] for k in ("S3_ACCESS_KEY", "S3_SECRET_KEY"))  # never anonymous
    script = s3["command"][0]
    assert "-s3.config=/tmp/s3.json" in script and '-bucket="$$S3_BUCKET"' in script
    assert s3["environment"]["S3_BUCKET"] == DSAR_ENV["DSAR_ARCHIVE_BUCKET"] == "${S3_BUCKET:-dsar-bundles}"
    assert DSAR_ENV["AWS_ACCESS_KEY_ID"].startswith("${S3_ACCESS_KEY")
    assert DSAR_ENV["AWS_SECRET_ACCESS_KEY"].startswith("${S3_SECRET_KEY")
    assert s3["healthcheck"]["test"][-1] == "http://127.0.0.1:8333/healthz"
    for name in ("postgres", "redis"):
        assert "ports" not in SERVICES[name] and SERVICES[name]["networks"] == ["backend"]


def test_only_the_proxy_listens_on_every_interface() -> None:
    for name, service in SERVICES.items():
        for port in service.get("ports", []):
            assert name == "proxy" or str(port).startswith("127.0.0.1:"), f"{name} publishes {port} on all interfaces"
    proxy = SERVICES["proxy"]
    assert proxy["profiles"] == ["tls"] and "./deploy/Caddyfile:/etc/caddy/Caddyfile:ro" in proxy["volumes"]
    caddyfile = (ROOT / "deploy" / "Caddyfile").read_text()
    assert "reverse_proxy api:8080" in caddyfile and "{$DSAR_DOMAIN}" in caddyfile


def test_images_are_pinned() -> None:
    for name, service in SERVICES.items():
        if "image" not in service or service.get("build"):
            continue
        tag = service["image"].rpartition(":")[2]
        assert ":" in service["image"] and tag != "latest" and re.search(r"\d", tag), f"{name}: {service['image']}"
    assert re.search(r"^FROM python:3\.\d+", DOCKERFILE, re.M)


def test_the_api_healthcheck_asks_healthz() -> None:
    test = SERVICES["api"]["healthcheck"]["test"]
    assert test[:3] == ["CMD", "python", "-c"] and "http://127.0.0.1:8080/healthz" in test[3]
    compile(test[3], "api healthcheck", "exec")


class _FakeRedis:
    def __init__(self, values: list[bytes], url: str, key: str) -> None:
        self.values, self.url, self.key = values, url, key

    def hvals(self, key: str) -> list[bytes]:
        assert key == self.key, f"the healthcheck read {key}, not the namespace's {self.key}"
        return self.values


def _run_worker_healthcheck(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> bool:
    """The worker healthcheck's code, run here under the container's settings file and `env`; True when healthy."""
    for name in ("DSAR_BROKER_URL", "DSAR_BROKER_REDIS_URL", "DSAR_BROKER_NAMESPACE", "DSAR_LEDGER_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DSAR_CONFIG", str(ROOT / "config" / "dsar.toml"))  # the file mounted at /etc/dsar
    for name in ("DSAR_LEDGER_URL", "DSAR_SECRET_KEY"):  # as the container has them
        monkeypatch.setenv(name, _interpolated(DSAR_ENV[name]))
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    code = SERVICES["worker"]["healthcheck"]["test"][3]
    with pytest.raises(SystemExit) as exit_:
        exec(compile(code, "worker healthcheck", "exec"), {})
    return exit_.value.code in (0, False)


@pytest.mark.parametrize("broker", ["redis", "rabbitmq"])
@pytest.mark.parametrize("mine,alive,healthy", [(True, True, True), (True, False, False), (False, True, False)])
def test_the_worker_healthcheck_reads_this_containers_heartbeat(monkeypatch: pytest.MonkeyPatch, broker: str,
                                                               mine: bool, alive: bool, healthy: bool) -> None:
    """On either broker the beats are read from settings.redis_url under heartbeat.key(namespace)."""
    import redis

    now = time.time()
    beat = heartbeat.Beat(id="w1", host=socket.gethostname() if mine else "another-container", pid=7,
                          started_at=now - 60, last_beat=now if alive else now - 600, interval=heartbeat.BEAT_SECONDS)
    opened: list[str] = []

    def from_url(url: str, *a: object, **k: object) -> _FakeRedis:
        opened.append(url)
        return _FakeRedis([beat.dump()], url, heartbeat.key("prod-eu"))

    monkeypatch.setattr(redis.Redis, "from_url", staticmethod(from_url))
    env = {"DSAR_BROKER_NAMESPACE": "prod-eu"}
    if broker == "redis":
        env["DSAR_BROKER_URL"] = "redis://redis:6379/0"
    else:  # as docs/deployment.md says to switch: the queue in RabbitMQ, the beats in the stack's Redis
        env.update(DSAR_BROKER_URL="amqp://dsar:pw@rabbitmq:5672/dsar", DSAR_BROKER_REDIS_URL="redis://redis:6379/1")
    assert _run_worker_healthcheck(monkeypatch, env) is healthy
    assert opened == ["redis://redis:6379/0" if broker == "redis" else "redis://redis:6379/1"]


@pytest.mark.parametrize("consumers,healthy", [(2, True), (0, False)])
def test_the_worker_healthcheck_with_rabbitmq_alone_counts_the_queues_consumers(
        monkeypatch: pytest.MonkeyPatch, consumers: int, healthy: bool) -> None:
    asked: list[tuple[str, str]] = []

    def count(url: str, queue: str) -> int:
        asked.append((url, queue))
        return consumers

    monkeypatch.setattr(heartbeat, "rabbitmq_consumers", count)
    url = "amqp://dsar:pw@rabbitmq:5672/dsar"
    assert _run_worker_healthcheck(monkeypatch, {"DSAR_BROKER_URL": url}) is healthy
    assert asked == [(url, "dsar")]  # the compose ledger's database name is the default namespace


def test_the_broker_can_be_switched_to_the_rabbitmq_profile() -> None:
    """RabbitMQ is offered in a profile: pinned 3.12+, login and vhost from .env, durable data, consumer_timeout
    above the longest task, a real healthcheck; the dsar services take amqp:// plus a Redis for the beats."""
    rabbit = SERVICES["rabbitmq"]
    assert rabbit["profiles"] == ["rabbitmq"] and "build" not in rabbit
    name, _, tag = rabbit["image"].partition(":")
    assert name == "rabbitmq" and tuple(int(p) for p in tag.split(".")[:2]) >= (3, 12), rabbit["image"]
    env = rabbit["environment"]
    assert env["RABBITMQ_DEFAULT_VHOST"] == "dsar"
    assert env["RABBITMQ_DEFAULT_USER"].startswith("${") and env["RABBITMQ_DEFAULT_PASS"].startswith("${")
    assert "RABBITMQ_DEFAULT_PASS" in " ".join(rabbit["command"])  # refuses an empty password (guest otherwise)
    assert "rabbitmq-data:/var/lib/rabbitmq" in rabbit["volumes"]
    conf = next(v for v in rabbit["volumes"] if v.startswith("./deploy/rabbitmq.conf:"))
    assert conf.split(":")[1].startswith("/etc/rabbitmq/conf.d/") and conf.endswith(":ro")
    settings = dict(line.split("=", 1) for line in (ROOT / "deploy" / "rabbitmq.conf").read_text().splitlines()
                    if line.strip() and not line.startswith("#"))
    assert int(settings["consumer_timeout "]) == 6 * 3600 * 1000
    assert rabbit["healthcheck"]["test"] == ["CMD", "rabbitmq-diagnostics", "-q", "ping"]
    assert "backend" in rabbit["networks"] and "ports" not in rabbit  # only the dsar services reach it
    assert COMPOSE["x-dsar"]["depends_on"]["rabbitmq"] == {"condition": "service_healthy", "required": False}

    switched = {k: _interpolated(str(v), {"DSAR_BROKER_URL": "amqp://dsar:pw@rabbitmq:5672/dsar",
                                          "DSAR_BROKER_REDIS_URL": "redis://redis:6379/0"})
                for k, v in DSAR_ENV.items()}
    settings_ = load_settings(ROOT / "config" / "dsar.toml", switched)
    assert settings_.broker.kind == "rabbitmq" and settings_.redis_url == "redis://redis:6379/0"
    assert settings_.broker.namespace == "dsar"
    default = load_settings(ROOT / "config" / "dsar.toml", {k: _interpolated(str(v)) for k, v in DSAR_ENV.items()})
    assert default.broker.kind == "redis" and default.broker.redis_url == ""


def test_the_scheduler_healthcheck_reads_the_file_its_command_touches(tmp_path: Path) -> None:
    args = SERVICES["scheduler"]["command"]
    path = args[args.index("--alive-file") + 1]
    code = SERVICES["scheduler"]["healthcheck"]["test"][3]
    assert f"'{path}'" in code
    alive = tmp_path / "alive"
    alive.touch()
    for age, healthy in ((0, True), (3600, False)):
        os.utime(alive, (time.time() - age, time.time() - age))
        with pytest.raises(SystemExit) as exit_:
            exec(compile(code.replace(path, str(alive)), "scheduler healthcheck", "exec"), {})
        assert (exit_.value.code in (0, False)) is healthy


def test_the_image_is_a_non_editable_install_run_by_a_user_with_config_mounted() -> None:
    copied = set(re.findall(r"^COPY (\S+) ", DOCKERFILE, re.M))
    packages = set(PYPROJECT["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"])
    assert packages | {"config"} <= copied, f"the Dockerfile does not copy {packages | {'config'} - copied}"
    installs = re.findall(r"pip install ([^&\n]+)", DOCKERFILE)
    assert installs == [". "] or installs == ["."], installs  # not -e, no [dev]
    assert re.search(r"^USER (?!root)\w+", DOCKERFILE, re.M)
    assert "ENV DSAR_CONFIG=/etc/dsar/dsar.toml" in DOCKERFILE
    assert 'ENTRYPOINT ["dsar"]' in DOCKERFILE and "dsar" in PYPROJECT["project"]["scripts"]


def test_the_build_context_leaves_out_the_venv_and_the_rest() -> None:
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    assert {".venv/", ".git/", "var/", "tests/", "bench/", ".env", "**/__pycache__/"} <= ignored
    needed = set(re.findall(r"^COPY (\S+) ", DOCKERFILE, re.M)) | {"pyproject.toml", "README.md"}
    assert not {n for n in needed if n in ignored or f"{n}/" in ignored}, "the Dockerfile copies what is ignored"
