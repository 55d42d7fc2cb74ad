"""What a long-running process imports, so that heavy optional modules stay out of it (issue 15, memory).

A `dsar worker` child (`python -m workers.supervisor --child`: settings, `app.setup`, `import workers.actors`) whose
data map has SQL systems only and whose archive is local needs neither boto3 (S3), Alembic (the schema was upgraded
before it started), FastAPI, Babel (until it writes a bundle page), phonenumbers, python-stdnum nor Jinja2; `dsar
serve` (the CLI plus the API's app on a ledger that is up to date) needs no scanner, no Alembic and no S3 client.
Each case runs in a fresh interpreter and compares its `sys.modules` with what it must not hold. No sizes here:
memory is measured by benchmarks (bench/), not tests.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from discovery.engine import db

ROOT = Path(__file__).resolve().parents[2]

DATA_MAP = """
version: 1
controller: {name: Footprint AS, contact: privacy@footprint.example}
systems:
  accounts:
    kind: sql
    title: Accounts
    purpose: To run the service.
    legal_basis: Contract (GDPR Art. 6(1)(b))
    retention: While the account is active.
    url_env: FOOTPRINT_ACCOUNTS_URL
    entities:
      users:
        table: users
        primary_key: id
        identities: {email: email, account_id: id}
        fields: {id: account, email: contact, name: identity, phone: contact}
        erase: {strategy: delete}
"""

# Never in a worker child with this data map and a local archive store.
NOT_IN_WORKER = ("boto3", "botocore", "s3transfer", "alembic", "mako", "fastapi", "starlette", "uvicorn", "babel",
                 "phonenumbers", "stdnum", "jinja2", "discovery.mapping.scan_sql", "discovery.mapping.detectors",
                 # no HTTP system mapped, no callback sent: requests and urllib3 wait until one is
                 "requests", "urllib3", "charset_normalizer", "connectors.matomo", "discovery.engine.callback_session")
# Never in `dsar serve` (the whole CLI is imported: the console script builds every command).
NOT_IN_SERVE = ("boto3", "botocore", "alembic", "mako", "phonenumbers", "stdnum", "jinja2", "babel",
                "discovery.mapping.scan_sql", "discovery.mapping.scan_vendors", "discovery.mapping.classify",
                "discovery.mapping.detectors", "discovery.mapping.diff", "discovery.mapping.propose")


@pytest.fixture()
def env(tmp_path: Path) -> dict[str, str]:
    return worker_env(tmp_path)


def worker_env(tmp_path: Path) -> dict[str, str]:
    """Settings and environment of a worker child: this data map, a SQLite ledger upgraded, a stub broker."""
    (tmp_path / "datamap.yaml").write_text(DATA_MAP, encoding="utf-8")
    ledger = tmp_path / "ledger.db"
    config = tmp_path / "dsar.toml"
    config.write_text(f"""
[ledger]
url = "sqlite:///{ledger}"
[broker]
url = "stub://"
[archive]
store = "local"
path = "{tmp_path / 'archive'}"
staging_path = "{tmp_path / 'staging'}"
[data_map]
path = "datamap.yaml"
""", encoding="utf-8")
    engine = db.make_engine(f"sqlite:///{ledger}")
    try:  # as `dsar worker` does before its children start (and `dsar db-upgrade`)
        db.upgrade(engine)
    finally:
        engine.dispose()
    base = {k: v for k, v in os.environ.items() if not k.startswith("DSAR_")}
    return {**base, "DSAR_CONFIG": str(config), "DSAR_SECRET_KEY": "footprint-secret-key-0123",
            "FOOTPRINT_ACCOUNTS_URL": f"sqlite:///{tmp_path / 'accounts.db'}", "PYTHONPATH": str(ROOT)}


def modules_after(code: str, env: dict[str, str]) -> set[str]:
    """The modules a fresh interpreter holds after running `code`."""
    script = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", script], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return set(json.loads(done.stdout.strip().splitlines()[-1]))


def present(modules: set[str], names: tuple[str, ...]) -> list[str]:
    return [n for n in names if n in modules or any(m.startswith(n + ".") for m in modules)]


WORKER_CHILD = """
from discovery.engine.settings import load_settings
from workers import app
app.setup(load_settings())
import workers.actors
app.runtime().connectors()
"""


def test_a_worker_child_leaves_the_optional_heavy_modules_out(env: dict[str, str]) -> None:
    modules = modules_after(WORKER_CHILD, {**env, "DSAR_SCHEMA_UPGRADED": "1"})
    assert "workers.actors" in modules and "connectors.sql" in modules  # it did build the runtime
    assert present(modules, NOT_IN_WORKER) == []


def test_a_worker_child_goes_without_rich() -> None:
    """`python -m workers.supervisor --child` refuses rich before structlog is imported (workers.logs.refuse_rich):
    structlog then loads neither rich nor pygments, and a traceback (a worker's log, -v) is still written."""
    import inspect

    from workers import supervisor

    source = inspect.getsource(supervisor.child_main)
    assert source.index("refuse_rich()") < source.index("import dramatiq") < source.index("from workers import app")
    code = """
from workers import logs
logs.refuse_rich()
import structlog, sys
logs.configure_logging("console", level=10)
try:
    raise KeyError("boom")
except KeyError:
    structlog.get_logger("t").exception("failed")
"""
    loaded = "\nprint(sorted(m for m, v in sys.modules.items() if v is not None))"  # a refused one is None
    done = subprocess.run([sys.executable, "-c", code + loaded], cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "Traceback (most recent call last)" in done.stderr and "KeyError: 'boom'" in done.stderr
    assert "'rich" not in done.stdout and "'pygments" not in done.stdout
    # and without refuse_rich structlog does load rich here (the dev extras install it), so the check can fail
    import importlib.util

    if importlib.util.find_spec("rich") is not None:
        plain = subprocess.run([sys.executable, "-c", "import structlog, sys; print('rich' in sys.modules)"],
                               capture_output=True, text=True, timeout=60)
        assert plain.stdout.strip() == "True"


def test_a_process_that_finds_the_ledger_up_to_date_does_not_load_alembic(env: dict[str, str]) -> None:
    """`dsar serve` and every command call `app.setup`, which upgrades the ledger: at head, that is one query."""
    modules = modules_after(WORKER_CHILD, env)  # without DSAR_SCHEMA_UPGRADED: setup checks the schema itself
    assert present(modules, ("alembic", "mako")) == []


def test_dsar_serve_leaves_the_scanners_and_s3_out(env: dict[str, str]) -> None:
    modules = modules_after("import workers.cli\nfrom workers.api import create_app\ncreate_app()", env)
    assert "fastapi" in modules and "workers.cli.mapping" in modules  # the app and every command were built
    assert present(modules, NOT_IN_SERVE) == []


def test_the_api_server_dsar_serve_execs_into_holds_no_cli_and_no_rich(env: dict[str, str]) -> None:
    """`dsar serve` execs `python -m workers.serve` (workers/cli/api.py): that process builds the app without the
    CLI's command modules, and refuses rich before structlog is imported."""
    from workers import serve

    argv = serve.serve_argv("127.0.0.1", 8090, 1)
    assert argv[1:3] == ["-m", "workers.serve"]
    code = "import sys\nfrom workers.logs import refuse_rich\nrefuse_rich()\n" \
           "from workers.api import create_app\ncreate_app()\nimport workers.serve\n" \
           "[sys.modules.pop(m) for m in [m for m, v in sys.modules.items() if v is None]]"
    modules = modules_after(code, {**env, "DSAR_SCHEMA_UPGRADED": "1"})
    assert "fastapi" in modules and "workers.api.routes_requests" in modules and "structlog" in modules
    assert present(modules, (*NOT_IN_SERVE, "workers.cli", "rich", "pygments", "requests", "urllib3")) == []
    source = (ROOT / "workers" / "serve.py").read_text(encoding="utf-8")
    assert source.index("refuse_rich()  #") < source.index("import uvicorn")


def test_the_lazy_modules_still_load_when_used(env: dict[str, str]) -> None:
    """The check can fail: using a scanner's detector, a language's formats or the console's pages imports them."""
    modules = modules_after("""
from discovery.mapping import detectors
assert detectors.is_phone("+47 412 34 567") and detectors.is_orgnr("923609016") and detectors.is_iban(
    "NO93 8601 1117 947")
from discovery.i18n.languages import language
assert language("nb").date("2026-11-30") == "30. november 2026"
from workers.console import web
web.templates().get_template("message.html")
from connectors.http import HttpClient
HttpClient("x", "http://127.0.0.1:9").close()
from discovery.engine.callbacks import CallbackPolicy, session
session(CallbackPolicy(())).close()
""", env)
    assert present(modules, ("phonenumbers", "stdnum", "babel", "jinja2", "requests", "urllib3",
                             "discovery.engine.callback_session")) == [
        "phonenumbers", "stdnum", "babel", "jinja2", "requests", "urllib3", "discovery.engine.callback_session"]


def test_the_head_revision_is_alembics(tmp_path: Path) -> None:
    """db.upgrade skips Alembic when the ledger is at db.head_revision(): that must be the head Alembic finds."""
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    cfg = Config()
    cfg.set_main_option("script_location", str(db.MIGRATIONS))
    assert db.head_revision() == ScriptDirectory.from_config(cfg).get_current_head()
    engine = db.make_engine(f"sqlite:///{tmp_path / 'ledger.db'}")
    try:
        with engine.connect() as conn:
            assert db.current_revision(conn) is None  # a new ledger: Alembic creates it
        db.upgrade(engine)
        with engine.connect() as conn:
            assert db.current_revision(conn) == db.head_revision()
        db.upgrade(engine)  # at head: nothing to do
    finally:
        engine.dispose()


CHILD = """
import sys
from workers import supervisor
code = supervisor.child_main(1, 0)
print(code, "pika" in sys.modules)
"""


def test_a_worker_child_on_redis_does_not_load_pika(env: dict[str, str]) -> None:
    """pika (2 MB a process) is RabbitMQ's client: a worker child on another broker runs, stops and would name an
    unreachable broker without it (workers.app.broker_trouble tells a broker's error by its module)."""
    import pika.exceptions
    import redis

    from workers.app import broker_trouble

    child = subprocess.Popen([sys.executable, "-c", CHILD], env={**env, "DSAR_SCHEMA_UPGRADED": "1"}, cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert child.stderr is not None
        for line in child.stderr:  # its log: ready, then stopped on SIGTERM
            if "worker.ready" in line:
                child.send_signal(signal.SIGTERM)
                break
        out, err = child.communicate(timeout=60)
    finally:
        child.kill()
    assert out.split() == ["0", "False"], err[-2000:]
    assert broker_trouble(redis.ConnectionError()) and broker_trouble(pika.exceptions.AMQPConnectionError())
    assert not broker_trouble(ConnectionError()) and not broker_trouble(ValueError())


def test_the_memory_floor_counts_only_what_dsars_processes_load(env: dict[str, str]) -> None:
    """bench/bench_memory_floor.py sums what the libraries alone hold in each long-running process (issue 15): every
    module it imports for a kind of process must be one that process loads, or the floor would overstate what dsar
    cannot avoid."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_memory_floor", ROOT / "bench" / "bench_memory_floor.py")
    assert spec is not None and spec.loader is not None
    floor = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(floor)
    # production's ledger and broker (psycopg, redis), never reached: nothing here connects
    on_redis = {**env, "DSAR_SCHEMA_UPGRADED": "1", "DSAR_BROKER_URL": "redis://127.0.0.1:1/0",
                "DSAR_LEDGER_URL": "postgresql+psycopg://dsar@127.0.0.1:1/dsar"}
    refuse = "from workers.logs import refuse_rich\nrefuse_rich()\n"
    worker = modules_after(refuse + WORKER_CHILD + "app.ensure_broker()", on_redis)
    # the API server: workers.serve.main imports uvicorn and builds the app; its first submission makes the broker
    api = modules_after(refuse + "import uvicorn\nfrom workers.api import create_app\ncreate_app()\n"
                        "from workers import app\napp.ensure_broker()", on_redis)
    assert sorted(set(floor.STACK["worker"]) - worker) == []
    assert sorted(set(floor.STACK["api"]) - api) == []
    assert floor.STACK["supervisor"] == [] and floor.SHAPE == {"api": 1, "supervisor": 1, "worker": 2}
