"""The error hierarchy. Core code raises these; only the CLI boundary catches them.

Every error carries the exit code the CLI uses, so the mapping lives in one place:

    0  success
    1  the operation failed               (OperationFailed and subclasses)
    2  bad input or usage                 (UsageError)
    3  configuration or connection error  (ConfigError, ConnectionFailed)

`wal fetch` has its own rules (1 = segment not in the archive, 255 = anything else,
usage errors included: PostgreSQL stops recovery instead of ending it early); see
`chainlens_ops.cli.hooks`. Results carry `ok` and `exit_code` (chainlens_ops.core.outcome) so
the CLI and the daemon decide success the same way.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_CONFIG = 3
FETCH_MISSING = 1  # `wal fetch`: confirmed not in the repository, and only that
FETCH_FATAL = 255  # `wal fetch`: anything else (entry.py repeats it for import failures)


class ChainlensError(Exception):
    """Base of every error the tool reports to its user."""

    exit_code = EXIT_FAILED

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def one_line(self) -> str:
        """The single line printed on stderr: what failed, why, and what to do."""
        text = self.message.strip().replace("\n", " ")
        if self.hint:
            text = f"{text} ({self.hint})"
        return text


class OperationFailed(ChainlensError):
    """The requested work was attempted and did not succeed."""

    exit_code = EXIT_FAILED


class UsageError(ChainlensError):
    """The user asked for something malformed: bad month, unknown table, bad time."""

    exit_code = EXIT_USAGE


class ConfigError(ChainlensError):
    """Configuration is missing or inconsistent."""

    exit_code = EXIT_CONFIG


class ConnectionFailed(ConfigError):
    """A database (or repository) could not be reached or refused our credentials."""


class LockTimeout(OperationFailed):
    """A lock could not be taken within lock_timeout after the allowed retries."""


class PgCommandError(OperationFailed):
    """A PostgreSQL binary (pg_dump, pg_basebackup, pg_ctl, ...) exited non-zero."""

    def __init__(self, argv0: str, returncode: int, stderr_tail: str) -> None:
        tail = stderr_tail.strip().splitlines()[-1] if stderr_tail.strip() else "no output"
        super().__init__(f"{argv0} exited with code {returncode}: {tail}")
        self.argv0 = argv0
        self.returncode = returncode
        self.stderr_tail = stderr_tail
