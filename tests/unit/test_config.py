"""The configuration model: precedence, the seed's variables, redaction. Pure Python."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from psycopg.conninfo import conninfo_to_dict

from chainlens_ops.core.errors import ConfigError, UsageError
from chainlens_ops.settings.config import load_settings, parse_duration_ms, redact_conninfo
from chainlens_ops.settings.keys import KNOWN_TOP_LEVEL_KEYS

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


@pytest.mark.parametrize(
    ("value", "ms"),
    [(30, 30_000), ("30", 30_000), ("30s", 30_000), ("2m", 120_000), ("500ms", 500),
     ("1h", 3_600_000), (" 1.5 s ", 1500), (0.25, 250), ("1d", 86_400_000),
     ("7d", 604_800_000), ("7D", 604_800_000), ("365d", 31_536_000_000)],
)  # fmt: skip
def test_durations_take_units_and_a_bare_number_is_seconds(value: object, ms: int) -> None:
    assert parse_duration_ms(value, "x") == ms


@pytest.mark.parametrize(
    "value", [0, "0s", -1, "-5s", "5 parsecs", "", True, [1], "nan", "366d", "1w", "d"]
)
def test_bad_durations_are_config_errors_for_keys_and_usage_errors_for_flags(
    value: object,
) -> None:
    with pytest.raises(ConfigError, match=r"^x must be"):
        parse_duration_ms(value, "x")
    with pytest.raises(UsageError, match=r"^--x must be"):
        parse_duration_ms(value, "--x", flag=True)


def test_lock_timeout_bare_number_is_seconds(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("lock_timeout = 3")
    assert load_settings(path, env={}).lock_timeout_ms == 3000
    assert load_settings(None, env={"CHAINLENS_LOCK_TIMEOUT": "250ms"}).lock_timeout_ms == 250
    assert load_settings(None, env={}).lock_timeout_ms == 2000


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('lokc_timeout = "2s"', "unknown key 'lokc_timeout' (did you mean 'lock_timeout'?)"),
        ('[databases.supabase]\nhots = "x"', "unknown key 'hots' in [databases.supabase] "
         "(did you mean 'host'?)"),
        ('[databases.supabas]\nhost = "x"', "unknown key 'supabas' in [databases] "
         "(did you mean 'supabase'?)"),
        ('[s3]\nregoin = "x"', "unknown key 'regoin' in [s3] (did you mean 'region'?)"),
        ("zzz = 1", "unknown key 'zzz' (known keys: default_db, "),
    ],
)  # fmt: skip
def test_unknown_keys_anywhere_are_refused_with_a_suggestion(
    tmp_path: Path, body: str, message: str
) -> None:
    path = tmp_path / "c.toml"
    path.write_text(body)
    with pytest.raises(ConfigError) as caught:
        load_settings(path, env={})
    assert caught.value.one_line().startswith(f"{path}: {message}")


def test_daemon_and_jobs_sections_are_checked_at_load_time_like_the_rest(
    tmp_path: Path,
) -> None:
    """One configuration model: `[daemon]` and `[[jobs]]` load (and fail) with every other
    key, whichever command reads the file."""
    path = tmp_path / "c.toml"
    assert {"jobs", "daemon", "backup"} <= set(KNOWN_TOP_LEVEL_KEYS)
    path.write_text('[[jobs]]\nname = "x"\n[daemon]\nany = 1\n')
    with pytest.raises(ConfigError, match=r"unknown key 'any' in \[daemon\]"):
        load_settings(path, env={})
    path.write_text(
        '[daemon]\nhistory_days = 7\nstop_timeout = "1m"\nrun_lease = "1m"\n[[jobs]]\nname = "x"\n'
    )
    s = load_settings(path, env={})
    assert (s.daemon.history_days, s.daemon.stop_timeout_s, s.daemon.job_timeout_s) == (7, 60, 3600)
    assert s.daemon.run_lease_s == 60
    assert [j.name for j in s.jobs] == ["x"]


def test_backup_section_is_checked_at_load_time(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[backup]\nzstd_level = 15\nspool_reserve = "512MB"\n')
    assert load_settings(path, env={}).backup.zstd_level == 15
    assert load_settings(path, env={}).backup.spool_reserve == 512 * 1024**2
    env = {"CHAINLENS_BACKUP_ZSTD_LEVEL": "3", "CHAINLENS_BACKUP_SPOOL_RESERVE": "0"}
    assert (load_settings(path, env=env).backup.zstd_level,
            load_settings(path, env=env).backup.spool_reserve) == (3, 0)  # fmt: skip
    refused = {
        'kind = "y"': "unknown key 'kind' in [backup]",
        "zstd_level = 0": "backup.zstd_level must be a whole number",
        "spool_reserve = -1": "backup.spool_reserve must be a size",
    }
    for body, message in refused.items():
        path.write_text(f"[backup]\n{body}\n")
        with pytest.raises(ConfigError, match=re.escape(message)):
            load_settings(path, env={})


def test_the_repository_lock_ttl_is_a_checked_setting_that_reaches_the_lock(
    tmp_path: Path,
) -> None:
    """`[repository] lock_ttl` and CHAINLENS_REPO_LOCK_TTL (a bare number is seconds, as
    the variable always took) are checked at load like every other duration, and a
    repository made from the settings gives its lock and its claims that life."""
    from chainlens_ops.repository import repository_for

    path = tmp_path / "c.toml"
    assert load_settings(None, env={}).repo_lock_ttl_s == 120
    path.write_text('[repository]\nlock_ttl = "5m"\n')
    assert load_settings(path, env={}).repo_lock_ttl_s == 300
    for value, seconds in (("3", 3), ("2m", 120), ("1.5", 1.5)):
        settings = load_settings(path, env={"CHAINLENS_REPO_LOCK_TTL": value})
        assert settings.repo_lock_ttl_s == seconds
    repo = repository_for(load_settings(path, env={}), f"file://{tmp_path}/repo")
    assert repo.locks.lock("backup").ttl_s == 300
    assert repo.locks.claim("restore").ttl_s == 300
    for env, body, named in (
        ({"CHAINLENS_REPO_LOCK_TTL": "soon"}, "", "CHAINLENS_REPO_LOCK_TTL must be"),
        ({"CHAINLENS_REPO_LOCK_TTL": "0"}, "", "CHAINLENS_REPO_LOCK_TTL must be"),
        ({}, '[repository]\nlock_ttl = "forever"\n', "repository.lock_ttl must be"),
    ):
        path.write_text(body)
        with pytest.raises(ConfigError, match=re.escape(named)):
            load_settings(path, env=env)


# Every key the file may hold, with a value of the right type.
GOOD = {
    "default_db": "supabase", "repo": "/srv/repo", "lock_timeout": "2s", "lock_retries": 3,
    "spool_dir": "/srv/spool",
    "databases.supabase.host": "h", "databases.supabase.port": 5432,
    "databases.supabase.dbname": "d", "databases.supabase.user": "u",
    "databases.supabase.password": "p", "databases.supabase.sslmode": "require",
    "databases.supabase.passfile": "/p", "databases.supabase.dsn": "host=h",
    "databases.supabase.ssl": True, "databases.supabase.repo": "/r",
    "s3.endpoint_url": "http://x", "s3.region": "r", "s3.sse": "AES256",
    "s3.sse_kms_key_id": "k", "s3.connect_timeout": "5s", "s3.read_timeout": 30,
    "s3.max_attempts": 4,
    "backup.zstd_level": 10, "backup.spool_reserve": "1GB",
    "repository.key_file": "/k", "repository.lock_ttl": "2m",
    "daemon.job_timeout": "1h", "daemon.stop_timeout": "10s", "daemon.history_days": 30,
    "daemon.metrics_file": "/m", "daemon.run_lease": "30s",
}  # fmt: skip

toml_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.text(min_size=1, max_size=5), inner, max_size=3)
    ),
    max_leaves=5,
)


def _nest(flat: dict[str, object]) -> dict[str, object]:
    data: dict[str, object] = {}
    for dotted, value in flat.items():
        *parents, leaf = dotted.split(".")
        node = data
        for part in parents:
            node = node.setdefault(part, {})  # type: ignore[assignment]
        node[leaf] = value  # type: ignore[index]
    return data


def test_every_key_is_known_to_the_property_test() -> None:
    from chainlens_ops.settings.config import _CONNINFO_KEYS

    db_keys = {k.split(".", 2)[2] for k in GOOD if k.startswith("databases.supabase.")}
    assert db_keys == {*_CONNINFO_KEYS, "dsn", "ssl", "repo"}
    assert load_settings(None, env={}) is not None


@settings(max_examples=300, deadline=None)
@given(key=st.sampled_from(sorted(GOOD)), value=toml_values)
def test_wrong_typed_values_for_every_key_give_one_config_error_never_a_traceback(
    key: str, value: object
) -> None:
    """Any value for any key: either it is accepted, or ConfigError names the key."""
    from chainlens_ops.settings.config import build_settings

    data = _nest(GOOD | {key: value})
    try:
        build_settings(data, {}, "ops.toml")
    except ConfigError as exc:
        assert key in exc.one_line() or key.rsplit(".", 1)[0] in exc.one_line(), exc
        assert "\n" not in exc.one_line()


def test_record_as_dict_and_json_leave_hidden_fields_out() -> None:
    from chainlens_ops.cli.common import to_jsonable
    from chainlens_ops.core.record import replace

    target = load_settings(
        None, env={"CHAINLENS_SUPABASE_DSN": "host=h password=hunter2"}
    ).databases["supabase"]
    assert "conninfo" not in target.as_dict()
    assert "hunter2" not in str(to_jsonable(load_settings(None, env={})))
    moved = replace(target, repo="/elsewhere")  # hidden fields survive a replace
    assert moved.conninfo == target.conninfo and moved.repo == "/elsewhere"
    with pytest.raises(TypeError):
        replace(target, nope=1)  # type: ignore[call-arg]


def test_a_storage_backend_parses_its_own_table(tmp_path: Path) -> None:
    """`[s3]` is the S3 backend's: its module checks and parses it, the settings carry the
    result opaquely, and `repository_for` hands each repository its backend's settings.
    Loading a file with `[s3]` imports no boto3 (a `wal push` into a local repository)."""
    import subprocess
    import sys

    from chainlens_ops.repository import repository_for
    from chainlens_ops.storage.s3 import S3Settings

    path = tmp_path / "c.toml"
    path.write_text('[s3]\nregion = "eu-west-1"\nmax_attempts = 2\n')
    s = load_settings(path, env={"CHAINLENS_S3_SSE": "aws:kms"})
    parsed = s.storage["s3"]
    assert parsed == S3Settings(region="eu-west-1", sse="aws:kms", max_attempts=2)
    assert repository_for(s, "s3://bucket/p")._settings is parsed
    assert repository_for(s, str(tmp_path / "repo"))._settings is None
    assert load_settings(None, env={}).storage == {}  # no table: the backend's defaults
    assert load_settings(None, env={"CHAINLENS_S3_SSE": "AES256"}).storage["s3"] == S3Settings(
        sse="AES256"
    )
    with pytest.raises(ConfigError, match="CHAINLENS_S3_SSE must be AES256 or aws:kms"):
        load_settings(None, env={"CHAINLENS_S3_SSE": "rot13"})
    script = (
        "import sys\n"
        "from chainlens_ops.settings.config import load_settings\n"
        f"load_settings({str(path)!r}, env={{}})\n"
        "assert not any(m.split('.')[0] in ('boto3', 'botocore') for m in sys.modules)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
