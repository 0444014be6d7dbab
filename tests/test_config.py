"""The configuration model: precedence, the seed's variables, redaction. Pure Python."""

from __future__ import annotations

from pathlib import Path

import pytest
from psycopg.conninfo import conninfo_to_dict

from chainlens_ops.config import load_settings, parse_duration_ms, redact_conninfo
from chainlens_ops.errors import ConfigError, UsageError

TOML = """
default_db = "supabase"
repo = "file:///srv/repo"
lock_timeout = "3s"

[databases.supabase]
host = "toml-host"
user = "ops"
ssl = true

[databases.microservices]
dsn = "host=toml-micro dbname=m"
repo = "s3://bucket/micro"
"""


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "ops.toml"
    path.write_text(TOML)
    return path


def test_toml_values_apply_when_nothing_overrides(config_file: Path) -> None:
    s = load_settings(config_file, env={})
    supa = conninfo_to_dict(s.databases["supabase"].conninfo)
    assert supa == {"dbname": "postgres", "host": "toml-host", "user": "ops", "sslmode": "require"}
    assert s.default_db == "supabase"
    assert s.lock_timeout_ms == 3000
    assert s.databases["supabase"].repo == "file:///srv/repo"
    assert s.databases["microservices"].repo == "s3://bucket/micro"


def test_environment_beats_toml_and_cli_beats_environment(config_file: Path) -> None:
    env = {
        "CHAINLENS_SUPABASE_DSN": "host=env-host dbname=e",
        "CHAINLENS_REPO": "file:///env/repo",
        "CHAINLENS_MICROSERVICES_REPO": "s3://env/micro",
        "CHAINLENS_DEFAULT_DB": "microservices",
    }
    s = load_settings(config_file, env=env)
    assert s.databases["supabase"].conninfo == "host=env-host dbname=e"
    assert s.databases["supabase"].repo == "file:///env/repo"
    assert s.databases["microservices"].repo == "s3://env/micro"
    assert s.target().name == "microservices"
    assert s.target("supabase", dsn="host=cli").conninfo == "host=cli"


def test_config_file_from_environment_variable(config_file: Path) -> None:
    s = load_settings(None, env={"CHAINLENS_CONFIG": str(config_file)})
    assert s.config_file == str(config_file)


def test_seed_variables_are_the_fallback() -> None:
    env = {"POSTGRES_HOST": "db.internal", "POSTGRES_PASSWORD": "s3cret"}
    s = load_settings(None, env=env)
    micro = conninfo_to_dict(s.databases["microservices"].conninfo)
    assert micro == {
        "dbname": "chainlens_microservices",
        "user": "chainlens",
        "host": "db.internal",
        "password": "s3cret",
    }
    assert "s3cret" not in s.databases["microservices"].display
    assert "s3cret" not in repr(s.databases["microservices"])


def test_redaction_covers_keyword_strings_and_uris() -> None:
    assert "pw" not in redact_conninfo("host=h password=pw user=u")
    assert "pw" not in redact_conninfo("postgresql://u:pw@h:5432/db")
    assert "h" in redact_conninfo("postgresql://u:pw@h:5432/db")
    assert redact_conninfo("host='unterminated") == "<unparseable connection string>"


def test_bad_values_are_config_or_usage_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "missing.toml", env={})
    bad = tmp_path / "bad.toml"
    bad.write_text("default_db = [")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(bad, env={})
    with pytest.raises(ConfigError, match="default_db"):
        load_settings(None, env={"CHAINLENS_DEFAULT_DB": "nope"})
    with pytest.raises(UsageError, match="unknown database"):
        load_settings(None, env={}).target("nope")
    with pytest.raises(UsageError, match="--dsn names one database"):
        load_settings(None, env={}).targets("all", dsn="host=x")
    assert parse_duration_ms("1min", "x") == 60_000
    assert parse_duration_ms("250ms", "x") == 250
    with pytest.raises(ConfigError):
        parse_duration_ms("soon", "x")
