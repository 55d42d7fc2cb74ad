"""Settings: a TOML file, each key overridable by an environment variable, validated at start-up.

The file is `--config`, else `$DSAR_CONFIG`, else `config/dsar.toml` of this checkout. A key
`section.name` is overridden by `DSAR_SECTION_NAME`. Secrets never live in the file: the
file names the environment variable that holds them.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from discovery.bundle.archive import ArchiveSettings
from discovery.bundle.signing import manifest_key
from discovery.engine.callbacks import validate_settings as validate_callbacks
from discovery.i18n.languages import SOURCE, UnknownLanguage, language_code

PROJECT_ROOT = Path(__file__).resolve().parents[2]  # discovery/engine/settings.py -> the checkout
DEFAULT_CONFIG = PROJECT_ROOT / "config" / "dsar.toml"


class ConfigError(Exception):
    """A one-line message naming the file and key that is wrong."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LedgerSettings(_Section):
    url: str
    # The subject's e-mail and learned identifiers are blanked this many days after a request ends
    # (`dsar ledger purge`, and the workers' sweeper); the receipts and the keyed hash stay (docs/security.md).
    retention_days: int = Field(365, ge=30, le=3650)

    @field_validator("url")
    @classmethod
    def _no_password_in_file(cls, value: str) -> str:
        if not value.startswith(("sqlite", "postgresql")):
            raise ValueError("must be a sqlite:/// or postgresql+psycopg:// URL")
        return value


# A namespace names the queue (Dramatiq wants a letter or _ first) and prefixes every Redis key of a deployment.
NAMESPACE_RE = re.compile(r"[a-z_][a-z0-9_-]{0,39}")


class BrokerSettings(_Section):
    # redis://host:port/db, amqp://user@host:5672/vhost (RabbitMQ; amqps:// with TLS), or stub:// (in-process)
    url: str
    # The queue's name and the prefix of every Redis key this deployment writes, so two deployments (or production
    # and the tests) on one Redis or vhost never take each other's messages. Empty: the ledger database's name.
    namespace: str = ""
    # With RabbitMQ: a Redis for the vendors' shared rate limits and the workers' heartbeats (optional; without it
    # rate limits are per process and the heartbeat is RabbitMQ's count of consumers, without "since when").
    redis_url: str = ""

    @field_validator("url")
    @classmethod
    def _known_scheme(cls, value: str) -> str:
        if not value.startswith(("redis://", "rediss://", "amqp://", "amqps://", "stub://")):
            raise ValueError("must be redis://..., rediss://..., amqp://..., amqps://... or stub:// (in-process)")
        return value

    @field_validator("namespace")
    @classmethod
    def _namespace(cls, value: str) -> str:
        if value and not NAMESPACE_RE.fullmatch(value):
            raise ValueError("must be 1-40 characters of a-z, 0-9, _ and -, starting with a letter or _")
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis(cls, value: str) -> str:
        if value and not value.startswith(("redis://", "rediss://")):
            raise ValueError("must be redis://... or rediss://... (or empty)")
        return value

    @property
    def kind(self) -> Literal["redis", "rabbitmq", "stub"]:
        if self.url.startswith("stub://"):
            return "stub"
        return "rabbitmq" if self.url.startswith("amqp") else "redis"


def default_namespace(ledger_url: str) -> str:
    """The ledger database's name (PostgreSQL, MariaDB), made a valid namespace; "dsar" for SQLite or no name."""
    if not ledger_url.startswith(("postgresql", "mysql", "mariadb")):
        return "dsar"
    name = re.sub(r"[^a-z0-9_-]", "_", urlsplit(ledger_url).path.strip("/").lower())
    if name and not re.match(r"[a-z_]", name):
        name = f"dsar_{name}"
    return name[:40] or "dsar"


class DataMapSettings(_Section):
    path: Path


class RequestSettings(_Section):
    due_days: int = Field(30, ge=1, le=30)  # Art. 12(3): one month
    # what people are written to in when a request, ticket or notice names no language (en, nb)
    language: str = SOURCE

    @field_validator("language")
    @classmethod
    def _known_language(cls, value: str) -> str:
        try:
            return language_code(value)
        except UnknownLanguage as exc:
            raise ValueError(str(exc)) from None


class WorkerSettings(_Section):
    processes: int = Field(1, ge=1, le=64)
    threads: int = Field(4, ge=1, le=64)
    task_lease_seconds: int = Field(300, ge=5)
    max_attempts: int = Field(5, ge=1, le=50)
    retry_backoff_seconds: float = Field(5.0, ge=0)
    sweep_interval_seconds: float = Field(30.0, gt=0)
    discovery_max_rounds: int = Field(5, ge=1, le=20)
    # Seconds one system's locate may take; past it that system's locate fails ("timed out") and discovery goes
    # on with the others (the hanging call is abandoned, not waited for).
    locate_timeout: float = Field(120.0, gt=0, le=3600)
    # Seconds a task may spend retrying transient failures (a system that cannot be reached) from the first one,
    # across attempts; then the task fails with one line (max_attempts bounds the attempts as well).
    system_retry_budget: float = Field(600.0, gt=0, le=24 * 3600)
    # A message sent wakes an idle consumer at once (workers/broker.py; RabbitMQ pushes). This is how long an idle
    # consumer or worker thread waits before it looks again by itself: the bound on how soon a stopping worker
    # notices, and on how soon a message nobody announced (one requeued from a dead worker) is taken. Redis
    # consumers heartbeat when they look, so it stays well under the 15 s heartbeat timeout.
    idle_ms: int = Field(2000, ge=100, le=5000)
    # The old polling interval: still accepted (old files and DSAR_WORKER_POLL_MS load), no longer used;
    # `dsar worker` says so. Consumers do not poll any more.
    poll_ms: int | None = Field(None, ge=10, le=5000)
    # `dsar worker` serves Dramatiq's own metrics (messages processed, failed, retried, in progress, durations)
    # for Prometheus on this port, summed over its worker processes; 0: off. Loopback unless metrics_host says.
    metrics_port: int = Field(0, ge=0, le=65535)
    metrics_host: str = "127.0.0.1"


class SecretSettings(_Section):
    # HMAC key for audit hashes and masking; the file names the variable, never the value
    secret_key_env: str = "DSAR_SECRET_KEY"
    # HMAC key that signs bundle manifests (16+ chars); unset: a key derived from the secret key
    manifest_key_env: str = "DSAR_MANIFEST_KEY"


class ApiSettings(_Section):
    """`dsar serve`: the HTTP API, ticket webhooks and reporting back. Secrets: the variables named here."""

    host: str = "127.0.0.1"
    port: int = Field(8080, ge=1, le=65535)
    workers: int = Field(1, ge=1, le=64)
    # Base of the links dsar hands out to people (https://dsar.example.com, the TLS proxy's address). Unset: no
    # download links, except with the embedded stub:// broker (the demo), which uses http://host:port
    public_url: str | None = None
    download_token_hours: int = Field(168, ge=1, le=24 * 30)  # how long a person's download link works
    # A bundle in S3 is handed out as a redirect to a short presigned link; false: streamed through the API (an S3
    # server people cannot reach, like docker-compose.yml's, which is on the internal network only)
    download_redirect: bool = True
    signature_tolerance_seconds: int = Field(300, ge=10, le=3600)  # replay window of signed webhooks
    ticket_webhook_secret_env: str = "DSAR_TICKET_WEBHOOK_SECRET"
    events_secret_env: str = "DSAR_EVENTS_SECRET"  # account service -> /v1/events/account-deleted
    callback_secret_env: str = "DSAR_CALLBACK_SECRET"  # signs the outcome dsar posts to callback URLs
    callback_url: str = ""  # default callback for webhook tickets that name none
    # Where callbacks may go: "https://host[:port]" or "https://*.example.net"; empty: no callbacks at all
    callback_allow: list[str] = Field(default_factory=list)
    # Non-public addresses (private, loopback, link-local) a callback host may resolve to, e.g. "10.20.0.0/16"
    callback_networks: list[str] = Field(default_factory=list)
    # Ticket notes and callbacks not delivered yet are retried (1 minute, doubling to 6 hours) for this many days
    report_back_expiry_days: int = Field(7, ge=1, le=90)
    freshdesk_domain: str = ""  # acme.freshdesk.com (or a full https:// URL); empty: no notes
    freshdesk_api_key_env: str = "DSAR_FRESHDESK_API_KEY"
    freshdesk_secret_env: str = "DSAR_FRESHDESK_WEBHOOK_SECRET"
    freshdesk_secret_header: str = "X-Dsar-Webhook-Secret"
    freshdesk_type_field: str = "cf_dsar_request_type"  # ticket field holding the request type
    freshdesk_subject_field: str = "cf_dsar_subject_email"  # ticket field: the subject, when not the requester
    freshdesk_tag_prefix: str = "dsar-"  # or a tag such as dsar-erasure
    freshdesk_language_field: str = "cf_dsar_language"  # ticket field: the person's language (en, nb), optional
    # the console at /ui (workers/console): how long a login lasts, and whether its cookie is Secure ("auto": when
    # the request came over https, or public_url is https)
    console_session_minutes: int = Field(480, ge=5, le=7 * 24 * 60)
    console_secure_cookie: Literal["auto", "always", "never"] = "auto"

    @field_validator("callback_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if value and not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return value.rstrip("/") if value else value

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, value: str | None) -> str | None:
        if not value:  # DSAR_API_PUBLIC_URL="" (compose's default) is unset too
            return None
        if not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _callbacks_allowed(self) -> ApiSettings:
        validate_callbacks(self.callback_allow, self.callback_networks, self.callback_url)
        return self


class ScheduleSettings(_Section):
    """Promises kept later: grace before an account-deletion erasure, the inactivity rule, the scheduler, notices."""

    grace_days: int = Field(30, ge=1, le=365)  # account deleted -> erasure after this many days (restorable until)
    inactivity_months: int = Field(24, ge=1, le=240)  # accounts inactive this long are erased, after a notice
    notice_days: int = Field(30, ge=1, le=365)  # time between the notice and the erasure
    poll_interval_seconds: float = Field(30.0, gt=0)  # `dsar scheduler`: how often it looks for due actions
    batch_size: int = Field(200, ge=1, le=10_000)  # due actions claimed per transaction
    notifier: Literal["outbox", "smtp", "webhook"] = "outbox"
    outbox_path: Path = Path("var/dsar/outbox")  # notifier "outbox": one .eml file per notice
    mail_from: str = ""  # default: the controller's contact in the data map
    smtp_host: str = "localhost"
    smtp_port: int = Field(587, ge=1, le=65535)
    smtp_starttls: bool = True
    smtp_user_env: str = ""  # names of the variables holding the SMTP login; empty: no login
    smtp_password_env: str = ""
    webhook_url: str = ""  # notifier "webhook": notices are POSTed here as JSON
    webhook_token_env: str = ""  # variable holding a bearer token for the webhook; empty: none
    # `dsar scheduler`'s periodic jobs (discovery.schedule.periodic): hours between two runs; 0: not run by it
    retention_run_hours: float = Field(24.0, ge=0, le=24 * 31)  # every rule, the inactivity and marketing sweeps too
    bundle_expiry_hours: float = Field(24.0, ge=0, le=24 * 31)
    ledger_purge_hours: float = Field(24.0, ge=0, le=24 * 31)

    @field_validator("webhook_url")
    @classmethod
    def _webhook_is_http(cls, value: str) -> str:
        if value and not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return value


class Settings(_Section):
    ledger: LedgerSettings
    broker: BrokerSettings
    archive: ArchiveSettings
    data_map: DataMapSettings
    requests: RequestSettings = Field(default_factory=RequestSettings)  # type: ignore[arg-type]
    worker: WorkerSettings = Field(default_factory=WorkerSettings)  # type: ignore[arg-type]
    secrets: SecretSettings = Field(default_factory=SecretSettings)
    schedule: ScheduleSettings = Field(default_factory=ScheduleSettings)  # type: ignore[arg-type]
    api: ApiSettings = Field(default_factory=ApiSettings)  # type: ignore[arg-type]
    log_format: Literal["console", "json"] = "console"
    source: Path = DEFAULT_CONFIG
    secret_key: bytes = b""
    manifest_key: bytes = b""  # signs bundle manifests (discovery.bundle.signing)

    @model_validator(mode="after")
    def _ledger_outlives_bundles(self) -> Settings:
        if self.ledger.retention_days < self.archive.retention_days:
            raise ValueError("ledger.retention_days must not be shorter than archive.retention_days")
        return self

    @model_validator(mode="after")
    def _default_namespace(self) -> Settings:
        if not self.broker.namespace:
            self.broker.namespace = default_namespace(self.ledger.url)
        return self

    @property
    def redis_url(self) -> str | None:
        """The Redis for shared rate limits and heartbeats: the broker's, or broker.redis_url beside RabbitMQ."""
        if self.broker.kind == "redis":
            return self.broker.url
        return self.broker.redis_url or None


# Optional secrets whose *_env setting is empty by default (off): the variable a deployment names when it turns one on,
# so a stack can pass it through before anyone sets it (docker-compose.yml names it only when it is set).
OPTIONAL_SECRETS = {"schedule.smtp_user_env": "DSAR_SMTP_USER", "schedule.smtp_password_env": "DSAR_SMTP_PASSWORD",
                    "schedule.webhook_token_env": "DSAR_NOTIFY_WEBHOOK_TOKEN"}


def override_variables() -> set[str]:
    """DSAR_<SECTION>_<KEY> for every settings key, and DSAR_LOG_FORMAT: each may be set, none has to be."""
    names = {"DSAR_LOG_FORMAT"}
    for section, info in Settings.model_fields.items():
        model = info.annotation
        if isinstance(model, type) and issubclass(model, BaseModel):
            names |= {f"DSAR_{section}_{key}".upper() for key in model.model_fields}
    return names


def environment_variables(path: str | os.PathLike[str] | None = None) -> dict[str, str]:
    """Every variable dsar reads besides the overrides, name -> where it is named: the settings file's location, the
    secrets the settings (their *_env keys, as the file sets them) and the data map (its *_env keys) name, the
    optional secrets a deployment may turn on, and the archive's AWS credentials. docker-compose.yml passes each one
    through (tests/unit/test_compose.py). Read from the files as they are: no secret needs to be set."""
    source = config_path(path, {})
    raw: dict[str, Any] = tomllib.loads(source.read_text(encoding="utf-8"))
    out = {"DSAR_CONFIG": "the settings file", "DSAR_LOG_LEVEL": "log level (workers/logs.py)",
           "AWS_ACCESS_KEY_ID": "archive (S3) credentials", "AWS_SECRET_ACCESS_KEY": "archive (S3) credentials"}
    for section, info in Settings.model_fields.items():
        model = info.annotation
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            continue
        for key, field in model.model_fields.items():
            if key.endswith("_env"):
                name = raw.get(section, {}).get(key, field.default) or OPTIONAL_SECRETS.get(f"{section}.{key}")
                if name:
                    out[name] = f"{section}.{key}"
    data_map = source.resolve().parent / raw.get("data_map", {}).get("path", "datamap.yaml")
    out.update(_env_keys(yaml.safe_load(data_map.read_text(encoding="utf-8")), data_map.name))
    return dict(sorted(out.items()))


def _env_keys(node: Any, where: str) -> dict[str, str]:
    """Values of every `*_env` key at any depth, with the key path that names them."""
    out: dict[str, str] = {}
    if isinstance(node, dict):
        for key, value in node.items():
            if str(key).endswith("_env") and isinstance(value, str) and value:
                out[value] = f"{where}.{key}"
            else:
                out.update(_env_keys(value, f"{where}.{key}"))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            out.update(_env_keys(value, f"{where}[{i}]"))
    return out


def config_path(explicit: str | os.PathLike[str] | None, env: Mapping[str, str]) -> Path:
    return Path(explicit or env.get("DSAR_CONFIG") or DEFAULT_CONFIG)


def load_settings(path: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None) -> Settings:
    env = os.environ if env is None else env
    source = config_path(path, env)
    try:
        raw: dict[str, Any] = tomllib.loads(source.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {source}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {source}: not valid TOML: {exc}") from None

    _apply_env_overrides(raw, env)
    try:
        settings = Settings.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err["loc"])
        message = "missing key" if err["type"] == "missing" else (
            "unknown key" if err["type"] == "extra_forbidden" else err["msg"].removeprefix("Value error, "))
        env_name = "DSAR_" + "_".join(str(p) for p in err["loc"]).upper()
        raise ConfigError(f"config {source}: {message}: '{key}' (set it in the file or as {env_name})") from None

    if urlsplit(raw["ledger"]["url"]).password and "DSAR_LEDGER_URL" not in env:
        raise ConfigError(f"config {source}: ledger.url holds a password; set it in DSAR_LEDGER_URL instead")
    base = source.resolve().parent
    settings.source = source.resolve()
    settings.data_map.path = (base / settings.data_map.path).resolve()
    settings.archive.path = Path(settings.archive.path).resolve()
    settings.archive.staging_path = Path(settings.archive.staging_path).resolve()
    settings.schedule.outbox_path = Path(settings.schedule.outbox_path).resolve()
    key = env.get(settings.secrets.secret_key_env, "")
    if len(key) < 16:
        raise ConfigError(
            f"environment variable {settings.secrets.secret_key_env} must hold a secret key of 16+ characters "
            "(it keys the hashes in the audit log and masked columns)"
        )
    settings.secret_key = key.encode()
    own = env.get(settings.secrets.manifest_key_env, "")
    if own and len(own) < 16:
        raise ConfigError(f"environment variable {settings.secrets.manifest_key_env} must hold 16+ characters "
                          "(it signs bundle manifests), or be unset (a key derived from the secret key)")
    settings.manifest_key = manifest_key(own.encode(), settings.secret_key)
    return settings


def _apply_env_overrides(raw: dict[str, Any], env: Mapping[str, str]) -> None:
    """DSAR_SECTION_KEY=value overrides [section] key; values are parsed as TOML scalars when they can be."""
    sections: dict[str, type[BaseModel]] = {
        "ledger": LedgerSettings, "broker": BrokerSettings, "archive": ArchiveSettings,
        "data_map": DataMapSettings, "requests": RequestSettings, "worker": WorkerSettings,
        "secrets": SecretSettings, "api": ApiSettings, "schedule": ScheduleSettings,
    }
    for section, model in sections.items():
        for key in model.model_fields:
            name = f"DSAR_{section}_{key}".upper()
            if name in env:
                raw.setdefault(section, {})[key] = _scalar(env[name])
    if "DSAR_LOG_FORMAT" in env:
        raw["log_format"] = env["DSAR_LOG_FORMAT"]


def _scalar(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text
