"""`wal push` and `wal fetch` without Typer: PostgreSQL starts one process per segment.

Measured: importing Typer + rich + boto3 + psycopg costs ~425 ms before any work, while
pgBackRest archives a 16 MB segment in ~67 ms. So these two commands parse their few
options by hand and import only what they use (no boto3 for a local repository, none at
all when a look-ahead record or a prefetched segment answers the call).

Exit codes:
    wal push   0 archived (durable); 1 failed; 2 usage error; 3 configuration error
    wal fetch  0 restored; 1 not in the repository (a confirmed absence, and only that);
               255 anything else, usage errors included (PostgreSQL stops recovery
               instead of ending it early)
"""

from __future__ import annotations

import sys

from chainlens_ops.errors import EXIT_FAILED, EXIT_OK, ChainlensError, UsageError

# No dataclasses, typing or pathlib here or below on this path (chainlens_ops.record).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from chainlens_ops.repository import Repository
    from chainlens_ops.wal.spool import Spool

FETCH_MISSING = 1
FETCH_FATAL = 255
DEFAULT_S3_LOOK_AHEAD = 16
DEFAULT_S3_PREFETCH = 8
DEFAULT_LOCAL_PREFETCH = 0  # no round trip to hide; --prefetch N for a mounted share

PUSH_USAGE = """\
Usage: chainlens-ops [--config FILE] [-v] wal push [OPTIONS] PATH

  Archive one WAL file (archive_command = 'chainlens-ops wal push %p').
  Exit 0 only once it is durable in the repository; 1 failed; 2 usage; 3 config.

Options:
  --repo URL          file:///abs/path, /abs/path or s3://bucket/prefix
                      (default: CHAINLENS_<DB>_REPO, CHAINLENS_REPO or the config file)
  --db NAME           supabase or microservices (default: default_db)
  --spool DIR         spool folder for look-ahead records (default: spool_dir, or
                      next to the data folder)
  --look-ahead N      also upload up to N other .ready files in parallel
                      (default: 16 for S3, 0 for a local repository)
  -h, --help          show this message
"""

FETCH_USAGE = """\
Usage: chainlens-ops [--config FILE] [-v] wal fetch [OPTIONS] NAME DEST

  Restore one WAL file (restore_command = 'chainlens-ops wal fetch %f %p').
  Exit 0 restored; 1 not in the repository; 255 any other failure (fatal to recovery).

Options:
  --repo URL          repository URL (default as for wal push)
  --db NAME           supabase or microservices (default: default_db)
  --spool DIR         spool folder for prefetched segments (default: spool_dir, or
                      next to the data folder)
  --prefetch N        download the next N segments in parallel (default: 8 for S3,
                      0 for a local repository)
  -h, --help          show this message
"""


class LeanArgs:
    def __init__(self) -> None:
        self.config: str | None = None
        self.verbose = False
        self.help = False
        self.options: dict[str, str] = {}
        self.positional: list[str] = []

    def count(self, option: str, default: int) -> int:
        value = self.options.get(option)
        if value is None:
            return default
        try:
            number = int(value)
        except ValueError:
            raise UsageError(f"{option} takes a whole number, not {value!r}") from None
        if not 0 <= number <= 256:
            raise UsageError(f"{option} must be between 0 and 256")
        return number


def parse_args(args: list[str], command: str, valued: tuple[str, ...]) -> LeanArgs:
    """Global options, then `wal <command>`, then the command's options and arguments."""
    parsed = LeanArgs()
    i = 0
    while i < len(args) and args[i] != "wal":
        arg = args[i]
        if arg == "--config" and i + 1 < len(args):
            parsed.config, i = args[i + 1], i + 2
            continue
        if arg.startswith("--config="):
            parsed.config = arg.split("=", 1)[1]
        elif arg in ("-v", "--verbose"):
            parsed.verbose = True
        else:
            raise UsageError(f"unexpected {arg!r} before `wal {command}`")
        i += 1
    if args[i : i + 2] != ["wal", command]:
        raise UsageError(f"expected `wal {command}`")
    rest = args[i + 2 :]
    only_positional = False
    j = 0
    while j < len(rest):
        arg = rest[j]
        j += 1
        if only_positional or not arg.startswith("-") or arg == "-":
            parsed.positional.append(arg)
        elif arg == "--":
            only_positional = True
        elif arg in ("-h", "--help"):
            parsed.help = True
        elif arg in ("-v", "--verbose"):
            parsed.verbose = True
        else:
            option, eq, value = arg.partition("=")
            if option not in valued:
                raise UsageError(f"unknown option {option!r} for `wal {command}` (see --help)")
            if not eq:
                if j >= len(rest):
                    raise UsageError(f"{option} needs a value")
                value, j = rest[j], j + 1
            parsed.options[option] = value
    return parsed


def push_main(args: list[str]) -> int:
    """`wal push`: returns the exit code; prints only errors (and a summary with -v)."""
    verbose = "-v" in args or "--verbose" in args
    try:
        parsed = parse_args(args, "push", ("--repo", "--db", "--spool", "--look-ahead"))
        if parsed.help:
            sys.stdout.write(PUSH_USAGE)
            return EXIT_OK
        if len(parsed.positional) != 1:
            raise UsageError("wal push takes one PATH (PostgreSQL's %p)")
        path = parsed.positional[0]
        repo, spool = _open(parsed, path)
        default = DEFAULT_S3_LOOK_AHEAD if repo.url.startswith("s3://") else 0
        from chainlens_ops.wal.push import push_wal

        result = push_wal(repo, path, spool=spool, look_ahead=parsed.count("--look-ahead", default))
        if parsed.verbose:
            ahead = f", {len(result.look_ahead)} uploaded ahead" if result.look_ahead else ""
            _say(f"wal push: {result.name}: {result.outcome} ({repo.url}){ahead}")
        return EXIT_OK
    except ChainlensError as exc:
        _say(f"wal push: error: {exc.one_line()}", exc if verbose else None)
        return exc.exit_code
    except Exception as exc:
        _say(f"wal push: internal error: {exc!r}", exc if verbose else None)
        return EXIT_FAILED


def fetch_main(args: list[str]) -> int:
    """`wal fetch`: 0 restored, 1 confirmed missing, 255 anything else."""
    verbose = "-v" in args or "--verbose" in args
    try:
        parsed = parse_args(args, "fetch", ("--repo", "--db", "--spool", "--prefetch"))
        if parsed.help:
            sys.stdout.write(FETCH_USAGE)
            return EXIT_OK
        if len(parsed.positional) != 2:
            raise UsageError("wal fetch takes NAME and DEST (PostgreSQL's %f %p)")
        name, dest = parsed.positional
        repo, spool = _open(parsed, dest)
        default = DEFAULT_S3_PREFETCH if repo.url.startswith("s3://") else DEFAULT_LOCAL_PREFETCH
        from chainlens_ops.wal.fetch import fetch_wal

        result = fetch_wal(
            repo, name, dest, spool=spool, prefetch=parsed.count("--prefetch", default)
        )
        if not result.found:
            if parsed.verbose:
                _say(f"wal fetch: {name}: not in {repo.url}")
            return FETCH_MISSING
        if parsed.verbose:
            extra = f", prefetched {len(result.prefetched)}" if result.prefetched else ""
            _say(f"wal fetch: {name}: restored from {result.source}{extra}")
        return EXIT_OK
    except ChainlensError as exc:
        _say(f"wal fetch: fatal: {exc.one_line()}", exc if verbose else None)
    except Exception as exc:
        _say(f"wal fetch: fatal: internal error: {exc!r}", exc if verbose else None)
    return FETCH_FATAL


def _open(parsed: LeanArgs, wal_path: str) -> tuple[Repository, Spool | None]:
    from chainlens_ops.config import load_settings
    from chainlens_ops.repository import Repository, repo_url
    from chainlens_ops.wal.spool import Spool, default_spool_root

    settings = load_settings(parsed.config)
    url = repo_url(settings, db=parsed.options.get("--db"), repo=parsed.options.get("--repo"))
    if not url.startswith(("s3://", "file://", "/")):
        raise UsageError(
            f"repository {url!r} is not a file:///absolute/path, /absolute/path or "
            "s3://bucket/prefix"
        )
    spool_dir = parsed.options.get("--spool") or settings.spool_dir
    root = spool_dir or default_spool_root(wal_path)
    return Repository(url, settings.s3), (Spool(root, url) if root else None)


def _say(line: str, exc: BaseException | None = None) -> None:
    if exc is not None:
        import traceback

        traceback.print_exception(exc)
    sys.stderr.write(f"chainlens-ops: {line}\n")
    sys.stderr.flush()
