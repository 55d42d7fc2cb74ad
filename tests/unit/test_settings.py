from pathlib import Path

import pytest

from discovery.engine.settings import ConfigError, load_settings

BASE = """
[ledger]
url = "sqlite:///var/x.db"
[broker]
url = "stub://"
[archive]
path = "var/archive"
staging_path = "var/staging"
[data_map]
path = "datamap.yaml"
"""
ENV = {"DSAR_SECRET_KEY": "0123456789abcdef0123"}


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "dsar.toml"
    path.write_text(text)
    return path


def test_defaults_and_environment_overrides(tmp_path: Path) -> None:
    s = load_settings(write(tmp_path, BASE), {**ENV, "DSAR_BROKER_URL": "redis://127.0.0.1:6379/3",
                                              "DSAR_WORKER_THREADS": "9"})
    assert s.broker.url == "redis://127.0.0.1:6379/3" and s.redis_url == s.broker.url
    assert s.worker.threads == 9 and s.requests.due_days == 30
    assert s.data_map.path == (tmp_path / "datamap.yaml").resolve()


def test_missing_key_is_named_with_its_variable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"missing key: 'ledger.url' \(set it in the file or as DSAR_LEDGER_URL\)"):
        load_settings(write(tmp_path, BASE.replace('url = "sqlite:///var/x.db"', "")), ENV)


def test_unknown_key_and_bad_values_are_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown key: 'worker.thredas'"):
        load_settings(write(tmp_path, BASE + "[worker]\nthredas = 3\n"), ENV)
    with pytest.raises(ConfigError, match=r"'broker.url'"):
        load_settings(write(tmp_path, BASE.replace("stub://", "kafka://x")), ENV)
    with pytest.raises(ConfigError, match=r"'requests.due_days'"):
        load_settings(write(tmp_path, BASE + "[requests]\ndue_days = 90\n"), ENV)


def test_secrets_come_only_from_the_environment(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"DSAR_SECRET_KEY"):
        load_settings(write(tmp_path, BASE), {})
    with_password = BASE.replace("sqlite:///var/x.db", "postgresql+psycopg://app:hunter2@db/dsar")
    with pytest.raises(ConfigError, match=r"holds a password; set it in DSAR_LEDGER_URL") as err:
        load_settings(write(tmp_path, with_password), ENV)
    assert "hunter2" not in str(err.value)


def test_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"config file not found"):
        load_settings(tmp_path / "nope.toml", ENV)
    with pytest.raises(ConfigError, match=r"not valid TOML"):
        load_settings(write(tmp_path, "[ledger\n"), ENV)


def test_the_default_settings_file_is_the_checkouts_own() -> None:
    """Without --config or DSAR_CONFIG the checkout's config/dsar.toml is read (moving settings.py must not lose it)."""
    root = Path(__file__).resolve().parents[2]
    settings = load_settings(env={"DSAR_SECRET_KEY": "k" * 32})
    assert settings.source == root / "config" / "dsar.toml"
    assert settings.data_map.path.is_file()
