"""Type checks for the configuration file: every key, at load time, one line per mistake.

On the `wal push` path: no re, typing or dataclasses at import time; difflib only when a
key is unknown (it is an error path).
"""

from __future__ import annotations

from chainlens_ops.core.errors import ConfigError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from typing import Any

# Every key the config file may hold, by section: the one list the loaders check against
# and the README's configuration reference is tested against (config.known_keys).
# Every section's types are checked in config.py when the file loads (`[[jobs]]` too);
# daemon/jobs.py adds what only the daemon can judge (commands, cron). A new key goes
# here first.
# Tables of storage backends (`[s3]`) are not here: each backend module names and checks
# its own keys (chainlens_ops.storage's registry; config.py asks them).
KNOWN_TOP_LEVEL_KEYS = (
    "default_db",
    "repo",
    "lock_timeout",
    "lock_retries",
    "spool_dir",
    "databases",
    "jobs",
    "daemon",
    "backup",
    "status",
    "repository",
)
DATABASE_KEYS = (
    "dsn",
    "host",
    "port",
    "dbname",
    "user",
    "password",
    "sslmode",
    "passfile",
    "ssl",
    "repo",
)
DAEMON_KEYS = ("job_timeout", "stop_timeout", "history_days", "metrics_file", "run_lease")
JOB_KEYS = ("name", "command", "cron", "every", "timezone", "timeout")
BACKUP_KEYS = (
    "zstd_level",
    "spool_reserve",
    "keep_last",
    "keep_days",
    "keep_daily",
    "keep_weekly",
    "keep_monthly",
    "full_every",
)
STATUS_KEYS = (
    "backlog_warn_segments",
    "backlog_critical_segments",
    "backlog_warn_age",
    "backlog_critical_age",
)
REPOSITORY_KEYS = ("key_file", "lock_ttl")


SECTIONS = ("databases", "jobs", "daemon", "backup", "status", "repository")


# The one duration grammar, for every key, variable and flag (the daemon's too).
_UNITS_MS = {"ms": 1, "s": 1000, "m": 60_000, "min": 60_000, "h": 3_600_000, "d": 86_400_000}
DURATION_FORM = "a duration such as 500ms, 30s, 2m, 1h or 7d (a bare number is seconds)"


def duration_ms(value: object, what: str, *, error: type[Exception] = ConfigError) -> int:
    """`30`, `"30"` and `"30s"` -> 30000; `"500ms"`, `"2m"`, `"1h"`, `"7d"`. Zero or less
    is refused, and so is more than a year."""
    if isinstance(value, bool):
        raise error(f"{what} must be {DURATION_FORM}, not {value!r}")
    if isinstance(value, int | float):
        number, scale = float(value), 1000
    elif isinstance(value, str):
        text = value.strip().lower()
        digits = text.rstrip("abcdefghijklmnopqrstuvwxyz").strip()
        unit = text[len(digits) :].strip() if digits else ""
        try:
            number = float(digits)
            scale = _UNITS_MS[unit] if unit else 1000
        except (ValueError, KeyError):
            raise error(f"{what} must be {DURATION_FORM}, not {value!r}") from None
    else:
        raise error(f"{what} must be {DURATION_FORM}, not {type(value).__name__}")
    ms = number * scale
    if not ms > 0 or ms != ms or ms > 365 * 86_400_000:
        raise error(f"{what} must be a positive duration of at most a year, not {value!r}")
    return max(1, int(ms))


_UNITS_BYTES = {"": 1, "b": 1, "kb": 1024, "mb": 1024**2, "gb": 1024**3, "tb": 1024**4}
SIZE_FORM = "a size such as 512MB, 2GB or 1TB (a bare number is bytes)"


def byte_size(value: object, what: str) -> int:
    """`"2GB"` -> 2 GiB (units are powers of 1024, as PostgreSQL's); a bare number is
    bytes. Negative sizes are refused; zero is allowed."""
    if isinstance(value, bool):
        raise ConfigError(f"{what} must be {SIZE_FORM}, not {value!r}")
    if isinstance(value, int):
        number, scale = float(value), 1
    elif isinstance(value, str):
        text_ = value.strip().lower().removesuffix("ib").removesuffix("i")
        digits = text_.rstrip("abcdefghijklmnopqrstuvwxyz").strip()
        unit = text_[len(digits) :].strip()
        unit = unit + "b" if unit in ("k", "m", "g", "t") else unit
        try:
            number, scale = float(digits), _UNITS_BYTES[unit]
        except (ValueError, KeyError):
            raise ConfigError(f"{what} must be {SIZE_FORM}, not {value!r}") from None
    else:
        raise ConfigError(f"{what} must be {SIZE_FORM}, not {_kind(value)}")
    if not number >= 0 or number != number or number * scale > 1024**6:
        raise ConfigError(f"{what} must be {SIZE_FORM}, not {value!r}")
    return int(number * scale)


def format_bytes(n: int) -> str:
    """1536 -> "1.5 KiB": sizes for people (output, error lines)."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(size) < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


def duration_s(value: object, what: str) -> int:
    """A duration (the same grammar as `duration_ms`) in whole seconds, rounded up."""
    return -(-duration_ms(value, what) // 1000)


def whole_number(value: object, what: str, low: int, high: int) -> int:
    """An integer in [low, high]; strings of digits too (environment variables)."""
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{what} must be a whole number from {low} to {high}, not {value!r}")
    if not low <= value <= high:
        raise ConfigError(f"{what} must be a whole number from {low} to {high}, not {value}")
    return value


def text(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{what} must be a string, not {_kind(value)}")
    return value


def choice(options: tuple[str, ...]) -> Callable[[object, str], object]:
    """A check that the value is one of `options`."""

    def checker(value: object, what: str) -> object:
        if value not in options:
            raise ConfigError(f"{what} must be one of {', '.join(options)}, not {value!r}")
        return value

    return checker


def boolean(value: object, what: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{what} must be true or false, not {_kind(value)}")
    return value


def port(value: object, what: str) -> str:
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    return str(whole_number(value, what, 1, 65535))


def table(value: object, what: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"{what} must be a table ([{what}]), not {_kind(value)}")
    return value


def refuse_unknown(data: Mapping[str, Any], known: tuple[str, ...], where: str) -> None:
    """One line naming the first unknown key, with a "did you mean" where one is close."""
    for key in data:
        if key not in known:
            import difflib

            close = difflib.get_close_matches(key, known, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"known keys: {', '.join(known)}"
            raise ConfigError(f"unknown key {key!r}{where}", hint=hint)


def check(
    data: Mapping[str, Any], checks: Mapping[str, Callable[[object, str], object]], prefix: str = ""
) -> None:
    """Refuse unknown keys and run each present key's check (naming it as `prefix.key`)."""
    refuse_unknown(data, tuple(checks), f" in [{prefix.rstrip('.')}]" if prefix else "")
    for key, value in data.items():
        checks[key](value, prefix + key)


def _kind(value: object) -> str:
    names = {
        str: "a string",
        int: "a number",
        float: "a number",
        bool: "a boolean",
        dict: "a table",
        list: "an array",
    }
    return f"{names.get(type(value), type(value).__name__)} ({value!r})"[:80]
