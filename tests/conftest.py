"""Shared fixtures: real services for integration tests, and a throwaway dsar configuration.

Locally a missing PostgreSQL/Redis skips the tests that need it; in CI (CI=true) it fails them,
so a green CI run always means they ran.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from sandbox import s3 as s3_sandbox

ROOT = Path(__file__).resolve().parent.parent
PG_ADMIN_URL = os.environ.get("DSAR_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
SECRET = "test-secret-key-0123456789"


def pytest_configure(config: pytest.Config) -> None:
    """A run stopped with SIGTERM (a CI timeout, `kill`) tears down as one stopped with Ctrl-C does: the fixtures'
    finalizers stop the servers and workers they started and drop the databases they made. An uncaught SIGTERM ends
    the process at once and leaves them behind (seen: `dsar serve` and supervisor processes, a redis-server and
    `dsar_t_*` databases on the shared services)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _stop_as_interrupted)


def _stop_as_interrupted(_signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt("stopped by SIGTERM")


def _unavailable(what: str, why: str) -> None:
    message = f"{what} is not reachable ({why})"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{message}; CI must provide it (.ci/run starts it)", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def pg_admin() -> Iterator[sa.Engine]:
    engine = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except sa.exc.OperationalError as exc:
        _unavailable("PostgreSQL", str(exc.orig).splitlines()[0] if exc.orig else "error")
    yield engine
    engine.dispose()


def _databases(admin: sa.Engine, create: str, drop: str) -> Iterator[Callable[[], str]]:
    """Makes fresh databases (`create`/`drop` take the name) for one test; drops only those afterwards."""
    names: list[str] = []

    def make() -> str:
        name = f"dsar_t_{uuid.uuid4().hex[:12]}"
        with admin.connect() as conn:
            conn.execute(sa.text(create.format(name=name)))
        names.append(name)
        return admin.url.set(database=name).render_as_string(hide_password=False)

    yield make
    with admin.connect() as conn:
        for name in names:
            conn.execute(sa.text(drop.format(name=name)))


@pytest.fixture
def pg_database(pg_admin: sa.Engine) -> Iterator[Callable[[], str]]:
    """Makes fresh PostgreSQL database URLs for one test; each is dropped afterwards."""
    yield from _databases(pg_admin, 'CREATE DATABASE "{name}"', 'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# MariaDB (the SQL connector's second dialect). How the tests log in as an administrator:
# DSAR_TEST_MARIADB_URL if set; otherwise root over TCP without a password (this machine's MariaDB has
# root@127.0.0.1 with no password, and CI runs as root on the same machine); if that is refused, root over
# the Unix socket (Debian's MariaDB lets the operating-system root user in there without a password).
# No user, password or grant is created; each test creates and drops only its own dsar_t_<hex> database.
MARIADB_SOCKET = os.environ.get("DSAR_TEST_MARIADB_SOCKET", "/run/mysqld/mysqld.sock")
MARIADB_ADMIN_URLS = ([os.environ["DSAR_TEST_MARIADB_URL"]] if os.environ.get("DSAR_TEST_MARIADB_URL") else
                      ["mysql+pymysql://root@127.0.0.1:3306/",
                       f"mysql+pymysql://root@localhost/?unix_socket={MARIADB_SOCKET}"])


@pytest.fixture(scope="session")
def mariadb_admin() -> Iterator[sa.Engine]:
    why = "no login tried"
    for url in MARIADB_ADMIN_URLS:
        engine = sa.create_engine(url, isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as conn:
                conn.execute(sa.text("SELECT 1"))
        except sa.exc.SQLAlchemyError as exc:
            why = str(getattr(exc, "orig", None) or exc).splitlines()[0]
            engine.dispose()
            continue
        yield engine
        engine.dispose()
        return
    _unavailable("MariaDB", why)


@pytest.fixture
def mariadb_database(mariadb_admin: sa.Engine) -> Iterator[Callable[[], str]]:
    """Makes fresh MariaDB database URLs (mysql+pymysql://) for one test, like pg_database."""
    yield from _databases(mariadb_admin, "CREATE DATABASE `{name}` CHARACTER SET utf8mb4",
                          "DROP DATABASE IF EXISTS `{name}`")


class RedisServer:
    """A redis-server of this test run's own, on a free port: the host's Redis is shared with other
    programs, so no test writes to it, let alone flushes it. Each caller takes a database of its own."""

    DATABASES = 512

    def __init__(self, directory: Path) -> None:
        import redis

        binary = shutil.which("redis-server")
        if binary is None:
            _unavailable("Redis", "redis-server is not installed")
        self.port = free_port()
        self.proc = subprocess.Popen(
            [str(binary), "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--databases", str(self.DATABASES), "--dir", str(directory)],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        self.url = f"redis://127.0.0.1:{self.port}"
        self._next = iter(range(1, self.DATABASES))
        client = redis.Redis.from_url(f"{self.url}/0")
        for _ in range(100):
            try:
                client.ping()
                return
            except redis.ConnectionError:
                if self.proc.poll() is not None:
                    break
                time.sleep(0.1)
        self.stop()
        _unavailable("Redis", f"redis-server did not start on port {self.port}")

    def database(self) -> str:
        """The URL of a database no other test has used in this run."""
        try:
            return f"{self.url}/{next(self._next)}"
        except StopIteration:
            pytest.fail(f"more than {self.DATABASES - 1} Redis databases asked for in one test run")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """A fresh Redis database URL on the test run's own redis-server."""
    return redis_server.database()


# -- RabbitMQ ----------------------------------------------------------------------------------

# The host's RabbitMQ is shared with other programs: the test run makes a vhost of its own (rabbitmqctl, which needs
# the Erlang cookie: root, or the rabbitmq user), gives the guest user (or DSAR_TEST_RABBITMQ_USER) rights on it
# only, and deletes that vhost, and nothing else, at the end. Tests keep apart inside it by namespace (a test's
# default namespace is its ledger database's name, dsar_t_<hex>).
RABBITMQ_URL = os.environ.get("DSAR_TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672")
RABBITMQCTL = os.environ.get("DSAR_TEST_RABBITMQCTL") or shutil.which("rabbitmqctl") or "/usr/sbin/rabbitmqctl"


class RabbitVhost:
    """A vhost of this test run's own on the host's RabbitMQ; `stop()` deletes it (only it)."""

    def __init__(self) -> None:
        from urllib.parse import urlsplit

        parts = urlsplit(RABBITMQ_URL)
        self.user = os.environ.get("DSAR_TEST_RABBITMQ_USER") or parts.username or "guest"
        self.name = f"dsar-test-{uuid.uuid4().hex[:12]}"
        self.url = f"{RABBITMQ_URL.rstrip('/')}/{self.name}"
        self.created = False
        try:
            with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 5672), timeout=3):
                pass
        except OSError as exc:
            _unavailable("RabbitMQ", f"{parts.hostname}:{parts.port or 5672}: {exc.strerror or exc}")
        if not Path(RABBITMQCTL).exists():
            _unavailable("RabbitMQ", "rabbitmqctl is not installed (it makes the tests' own vhost)")
        self._ctl("add_vhost", self.name)
        self.created = True
        self._ctl("set_permissions", "-p", self.name, self.user, ".*", ".*", ".*")

    def _ctl(self, *args: str) -> None:
        done = subprocess.run([RABBITMQCTL, "-q", *args], capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            why = (done.stderr or done.stdout).strip().splitlines()
            self.stop()
            _unavailable("RabbitMQ", f"rabbitmqctl {args[0]}: {why[-1] if why else done.returncode}")

    def stop(self) -> None:
        if self.created:
            self.created = False
            subprocess.run([RABBITMQCTL, "-q", "delete_vhost", self.name], capture_output=True, timeout=60)


@pytest.fixture(scope="session")
def rabbitmq_vhost() -> Iterator[RabbitVhost]:
    vhost = RabbitVhost()
    yield vhost
    vhost.stop()


@pytest.fixture
def rabbitmq_url(rabbitmq_vhost: RabbitVhost) -> str:
    """The test run's own vhost (amqp://...); a test keeps to its own queues through its namespace."""
    return rabbitmq_vhost.url


@pytest.fixture(params=["redis", "rabbitmq"])
def broker_url(request: pytest.FixtureRequest) -> str:
    """A broker of the test run's own, once per kind: a fresh Redis database, then the run's RabbitMQ vhost."""
    return str(request.getfixturevalue("redis_url" if request.param == "redis" else "rabbitmq_url"))


class BrokerWakeups:
    """Sends wake-ups the way workers.actors does (to broker.namespace's queue on the configured broker), without
    importing it (it binds this process's broker)."""

    def __init__(self, settings: Any) -> None:
        from workers.app import make_broker

        self.broker, self.queue = make_broker(settings), settings.broker.namespace

    def _send(self, actor: str, arg: Any) -> None:
        import dramatiq

        self.broker.enqueue(dramatiq.Message(queue_name=self.queue, actor_name=actor, args=(arg,), kwargs={},
                                             options={}))

    def discover(self, request_id: str) -> None:
        self._send("discover", request_id)

    def execute(self, task_id: int) -> None:
        self._send("execute", task_id)

    def merge(self, request_id: str) -> None:
        self._send("merge", request_id)

    def close(self) -> None:
        self.broker.close()


def write_config(tmp_path: Path, ledger_url: str, broker_url: str = "stub://", namespace: str = "",
                 **worker: object) -> Path:
    """A settings file for one test, using the project's data map unless one is copied beside it. The namespace
    defaults to the ledger database's name (dsar_t_<hex> for a test's PostgreSQL ledger: its own)."""
    datamap = tmp_path / "datamap.yaml"
    if not datamap.exists():
        shutil.copy(ROOT / "config" / "datamap.yaml", datamap)
    worker_lines = "\n".join(f"{k} = {v!r}".replace("'", '"') for k, v in worker.items())
    path = tmp_path / "dsar.toml"
    path.write_text(f"""
[ledger]
url = "{ledger_url}"
[broker]
url = "{broker_url}"
namespace = "{namespace}"
[archive]
path = "{tmp_path / 'archive'}"
staging_path = "{tmp_path / 'staging'}"
[data_map]
path = "datamap.yaml"
[worker]
{worker_lines}
""")
    return path


def dsar_env(config: Path, accounts_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DSAR_")}
    env.update({"DSAR_CONFIG": str(config), "DSAR_SECRET_KEY": SECRET, "DSAR_ACCOUNTS_DB_URL": accounts_url,
                "PYTHONUNBUFFERED": "1"})
    env.update(extra)
    return env


def run_dsar(args: list[str], env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "workers.cli", *args], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


def seed_accounts(url: str) -> sa.Engine:
    from sandbox import accounts_db

    engine = sa.create_engine(url)
    accounts_db.create(engine, drop=True)
    accounts_db.seed(engine)
    return engine


# -- S3 (SeaweedFS) ---------------------------------------------------------------------------

S3_URL = os.environ.get("DSAR_TEST_S3_URL", s3_sandbox.DEFAULT_URL)
S3_ACCESS_KEY, S3_SECRET_KEY = s3_sandbox.ACCESS_KEY, s3_sandbox.SECRET_KEY


def _s3_client() -> Any:
    return s3_sandbox.client(S3_URL)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """An S3 server with signature checks: the one at DSAR_TEST_S3_URL, or SeaweedFS started here."""
    server = s3_sandbox.LocalS3(tmp_path_factory.mktemp("seaweedfs"), S3_URL)
    try:
        server.__enter__()
    except s3_sandbox.S3Unavailable as exc:
        _unavailable("S3 server", str(exc))
    yield {"endpoint_url": S3_URL, "access_key": S3_ACCESS_KEY, "secret_key": S3_SECRET_KEY,
           "region": "us-east-1"}
    server.stop()


@pytest.fixture
def s3_bucket(s3_server: dict[str, str]) -> Iterator[str]:
    """A fresh, empty bucket for one test; emptied and removed afterwards."""
    client = _s3_client()
    name = f"dsar-t-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=name)
    yield name
    paginator = client.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=name):
        for obj in page.get("Contents", []):
            client.delete_object(Bucket=name, Key=obj["Key"])
    client.delete_bucket(Bucket=name)
