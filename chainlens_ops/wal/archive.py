"""Settings -> the repository and spool a WAL hook works with (one place: the hooks, the
Typer commands and the daemon all open an archive this way).

On the `wal push`/`wal fetch` path: nothing heavy at import time (chainlens_ops.core.record).
"""

from __future__ import annotations

from chainlens_ops.core.errors import UsageError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from chainlens_ops.repository import Repository
    from chainlens_ops.settings.config import Settings
    from chainlens_ops.wal.fetch import FetchResult
    from chainlens_ops.wal.push import PushResult
    from chainlens_ops.wal.spool import Spool

DEFAULT_S3_LOOK_AHEAD = 16
DEFAULT_LOCAL_LOOK_AHEAD = 0
DEFAULT_S3_PREFETCH = 8
DEFAULT_LOCAL_PREFETCH = 0  # no round trip to hide; --prefetch N for a mounted share
MAX_PARALLEL = 256


def open_archive(
    settings: Settings,
    *,
    db: str | None,
    repo: str | None,
    spool_dir: str | None,
    wal_path: str,
) -> tuple[Repository, Spool | None]:
    """The repository for `db` (or the explicit `repo` URL) and the spool beside it:
    `spool_dir`, else the settings' spool_dir, else next to the data folder of
    `wal_path` (None when there is none)."""
    from chainlens_ops.repository import repo_url, repository_for
    from chainlens_ops.wal.spool import Spool, default_spool_root

    url = repo_url(settings, db=db, repo=repo)
    repository = repository_for(settings, url)
    root = spool_dir or settings.spool_dir or default_spool_root(wal_path)
    return repository, (Spool(root, url) if root else None)


def parallel_count(value: int | None, default: int, option: str) -> int:
    """--look-ahead / --prefetch: `default` when not given, else 0..MAX_PARALLEL."""
    if value is None:
        return default
    if not 0 <= value <= MAX_PARALLEL:
        raise UsageError(f"{option} must be between 0 and {MAX_PARALLEL}, not {value}")
    return value


def look_ahead_default(repo: Repository) -> int:
    from chainlens_ops.storage import is_remote

    return DEFAULT_S3_LOOK_AHEAD if is_remote(repo.url) else DEFAULT_LOCAL_LOOK_AHEAD


def prefetch_default(repo: Repository) -> int:
    from chainlens_ops.storage import is_remote

    return DEFAULT_S3_PREFETCH if is_remote(repo.url) else DEFAULT_LOCAL_PREFETCH


def archive_segment(
    settings: Settings,
    path: str,
    *,
    db: str | None = None,
    repo: str | None = None,
    spool_dir: str | None = None,
    look_ahead: int | None = None,
) -> PushResult:
    """`wal push` from settings: open the archive, push `path` (and look ahead)."""
    from chainlens_ops.wal.push import push_wal

    opened, spool = open_archive(settings, db=db, repo=repo, spool_dir=spool_dir, wal_path=path)
    count = parallel_count(look_ahead, look_ahead_default(opened), "--look-ahead")
    return push_wal(opened, path, spool=spool, look_ahead=count)


def restore_segment(
    settings: Settings,
    name: str,
    dest: str,
    *,
    db: str | None = None,
    repo: str | None = None,
    spool_dir: str | None = None,
    prefetch: int | None = None,
    required_through: str | None = None,
) -> FetchResult:
    """`wal fetch` from settings: open the archive, restore `name` to `dest`."""
    from chainlens_ops.wal.fetch import fetch_wal, parse_required

    required = parse_required(required_through) if required_through is not None else ()
    opened, spool = open_archive(settings, db=db, repo=repo, spool_dir=spool_dir, wal_path=dest)
    count = parallel_count(prefetch, prefetch_default(opened), "--prefetch")
    return fetch_wal(opened, name, dest, spool=spool, prefetch=count, required=required)
