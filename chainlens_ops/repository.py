"""The repository: where one PostgreSQL cluster's WAL, backups and restore points live.

A repository serves exactly one cluster (like a pgBackRest stanza), identified by the
system identifier that `pg_controldata` shows and every WAL segment header carries.
It is a storage URL (`file:///abs/path`, `/abs/path` or `s3://bucket/prefix`); the
layout below is the same on every backend (keys are '/'-separated):

    chainlens-repo.toml                 the format marker, written once on first use,
                                        flat TOML (read without a TOML parser: it is on
                                        the `wal push` path, see chainlens_ops.record):
                                            format = 1
                                            system_identifier = "7712..."
                                            wal_segment_size = 16777216
                                            pg_version = 15
                                            created_at = "2026-...Z"
                                            created_by = "chainlens-ops 0.1.0"
    wal/<TTTTTTTTXXXXXXXX>/<segment>    WAL segments, `.partial` segments and `.backup`
                                        files, grouped by timeline + log id (256 files
                                        per folder at 16 MB segments)
    wal/history/<TTTTTTTT>.history      timeline history files (never overwritten)
    backups/                            reserved: base backups and their catalog
    restore-points/                     reserved: the restore-point catalog

Every WAL object is stored under its bare file name in the envelope format of
`chainlens_ops.wal.objfmt` (zstd, with the sha256 of the original file inside).

The system identifier is kept as a string: it is an unsigned 64-bit number.
A marker with a higher `format` than this tool knows is refused, so an old tool never
writes into a repository laid out by a newer one.

This module is on the `wal push` hot path: it imports no boto3, psycopg or Typer.
"""

from __future__ import annotations

import _thread
import io
import os

from chainlens_ops import __version__
from chainlens_ops.errors import ConfigError, OperationFailed
from chainlens_ops.metadata import DamagedMetadata, Fields
from chainlens_ops.pg.walnames import HISTORY, WalName
from chainlens_ops.record import record
from chainlens_ops.storage import AlreadyExists, NotFound, open_storage

TYPE_CHECKING = False
if TYPE_CHECKING:
    from chainlens_ops.config import S3Settings, Settings
    from chainlens_ops.storage.protocol import Storage

FORMAT = 1
MARKER_KEY = "chainlens-repo.toml"
WAL_PREFIX = "wal/"
HISTORY_PREFIX = "wal/history/"
BACKUPS_PREFIX = "backups/"
RESTORE_POINTS_PREFIX = "restore-points/"


class WrongCluster(OperationFailed):
    """A WAL file or database belongs to another cluster than the repository."""


class RepositoryUnavailable(OperationFailed):
    """The repository cannot say whether an object is absent: its root or marker is
    missing (an unmounted volume, a deleted folder, the wrong path). Never NotFound."""


@record
class RepoMarker:
    format: int
    system_identifier: int
    wal_segment_size: int
    pg_version: int
    created_at: str
    created_by: str
    repository_id: str = ""  # random, per repository creation (older markers: none)

    @property
    def identity(self) -> str:
        """Tells this repository apart from one deleted and recreated at the same URL
        (look-ahead records are tied to it)."""
        return f"{self.system_identifier}:{self.repository_id or self.created_at}"

    def to_bytes(self) -> bytes:
        return (
            "# chainlens-ops repository: one PostgreSQL cluster's WAL, backups, restore points\n"
            f"format = {self.format}\n"
            f'system_identifier = "{self.system_identifier}"\n'
            f"wal_segment_size = {self.wal_segment_size}\n"
            f"pg_version = {self.pg_version}\n"
            f'created_at = "{self.created_at}"\n'
            f'created_by = "{self.created_by}"\n'
            + (f'repository_id = "{self.repository_id}"\n' if self.repository_id else "")
        ).encode()


class Repository:
    """One repository. The storage backend is opened on first use, so a caller that
    needs only the URL (e.g. `wal push`'s look-ahead fast path) never imports boto3."""

    def __init__(self, url: str, s3: S3Settings | None = None) -> None:
        self.url = url
        self._s3 = s3
        self._storage: Storage | None = None
        # Look-ahead and prefetch threads share one repository: one backend (one boto3
        # client, ~15 MB and ~0.3 s) for all of them. `_thread`: the hot path avoids
        # importing `threading`.
        self._storage_lock = _thread.allocate_lock()
        self._marker: RepoMarker | None = None

    @property
    def storage(self) -> Storage:
        if self._storage is None:
            with self._storage_lock:
                if self._storage is None:
                    self._storage = open_storage(self.url, self._s3)
        return self._storage

    @property
    def display(self) -> str:
        return self.url

    def require_present(self) -> None:
        """For commands that read the repository: a local path that does not exist is an
        error ("does not exist"), never an empty archive or catalog. (A missing S3 bucket
        already fails in the backend.)"""
        root = getattr(self.storage, "root", None)
        if isinstance(root, str) and not os.path.isdir(root):
            raise OperationFailed(
                f"repository {self.url} does not exist", hint="check the path (--repo, repo =)"
            )

    # -- the marker -------------------------------------------------------------------

    def marker(self, *, fresh: bool = False) -> RepoMarker | None:
        """The marker, or None for a repository nothing has been written to yet.
        `fresh` reads it again (the repository may have gone away since)."""
        if self._marker is None or fresh:
            try:
                with self.storage.open(MARKER_KEY) as fh:
                    raw = fh.read(1024 * 1024)
            except NotFound:
                return None
            self._marker = _parse_marker(raw, self.url)
        return self._marker

    def ensure_marker(
        self, system_identifier: int, wal_segment_size: int, pg_version: int
    ) -> RepoMarker:
        """The marker, written now if missing; WrongCluster if it names another cluster.

        Two first pushers may race: the conditional put lets exactly one marker win and
        the loser re-reads it, so both check against the same cluster.
        """
        marker = self.marker()
        if marker is None:
            import datetime as dt  # only here: the hot path rarely creates a marker

            fresh = RepoMarker(
                format=FORMAT,
                system_identifier=system_identifier,
                wal_segment_size=wal_segment_size,
                pg_version=pg_version,
                created_at=dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                created_by=f"chainlens-ops {__version__}",
                repository_id=_random_id(),
            )
            try:
                self.storage.put(MARKER_KEY, io.BytesIO(fresh.to_bytes()), if_absent=True)
                self._marker = marker = fresh
            except AlreadyExists:
                marker = self.marker()
                if marker is None:  # pragma: no cover - deleted between put and read
                    raise OperationFailed(f"repository {self.url}: marker vanished") from None
        self.check_cluster(system_identifier, what="this WAL", marker=marker)
        if marker.wal_segment_size != wal_segment_size:
            raise WrongCluster(
                f"WAL segment size {wal_segment_size} differs from the repository's "
                f"{marker.wal_segment_size} ({self.url})"
            )
        return marker

    def check_cluster(
        self, system_identifier: int, *, what: str, marker: RepoMarker | None = None
    ) -> None:
        marker = marker or self.marker()
        if marker is not None and marker.system_identifier != system_identifier:
            raise WrongCluster(
                f"{what} belongs to database system {system_identifier}, but repository "
                f"{self.url} belongs to database system {marker.system_identifier}",
                hint="each cluster needs its own repository",
            )

    def confirm_absent(self, what: str, system_identifier: int | None) -> None:
        """Raise unless "`what` is not here" is a true answer: the repository is present,
        holds its marker, and (when known) belongs to `system_identifier`'s cluster.

        An unmounted volume, a deleted or empty root or a wrong path looks exactly like
        "no such object" to a plain open; PostgreSQL would then end recovery and promote
        with part of the data. Called only on a miss, so it costs nothing otherwise.
        """
        marker = self.marker(fresh=True)
        if marker is None:
            raise RepositoryUnavailable(
                f"{what} is not in repository {self.url}, but the repository itself is "
                f"missing or empty (no {MARKER_KEY}): not answering 'absent'",
                hint="is the repository volume mounted and the path right?",
            )
        if system_identifier is not None:
            self.check_cluster(system_identifier, what="this data folder", marker=marker)

    # -- keys -------------------------------------------------------------------------

    @staticmethod
    def wal_key(name: WalName) -> str:
        if name.kind == HISTORY:
            return HISTORY_PREFIX + name.name
        return f"{WAL_PREFIX}{name.name[:16]}/{name.name}"


def data_folder_system_identifier(wal_path: str) -> int | None:
    """The system identifier of the data folder that `wal_path` (`pg_wal/...`, as
    PostgreSQL passes %p to archive_command/restore_command, which run in the data
    folder) belongs to: the first 8 bytes of `global/pg_control`, a little-endian
    uint64. None for a path outside a data folder or an unreadable pg_control."""
    folder = os.path.dirname(os.path.abspath(wal_path))
    if os.path.basename(folder) != "pg_wal":
        return None
    try:
        with open(os.path.join(os.path.dirname(folder), "global", "pg_control"), "rb") as fh:
            head = fh.read(8)
    except OSError:
        return None
    return int.from_bytes(head, "little") if len(head) == 8 else None


def repo_url(settings: Settings, *, db: str | None = None, repo: str | None = None) -> str:
    """The repository for `db`: `--repo`, else CHAINLENS_<DB>_REPO / CHAINLENS_REPO /
    the config file (resolved in config.py)."""
    if repo:
        return repo
    target = settings.target(db)
    if not target.repo:
        raise ConfigError(
            f"no repository for the {target.name} database",
            hint=f"pass --repo, set CHAINLENS_REPO or CHAINLENS_{target.name.upper()}_REPO, "
            "or `repo` in the config file",
        )
    return target.repo


def _random_id() -> str:
    return os.urandom(8).hex()


def open_repository(
    settings: Settings, *, db: str | None = None, repo: str | None = None
) -> Repository:
    """The repository for `db` (see `repo_url`), with the configured S3 settings."""
    return Repository(repo_url(settings, db=db, repo=repo), settings.s3)


def _parse_marker(raw: bytes, url: str) -> RepoMarker:
    """The marker, checked by the metadata layer: one line naming the field otherwise."""
    where = f"repository {url}: {MARKER_KEY}"
    values: dict[str, object] = {}
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise DamagedMetadata(where, "not UTF-8 text") from None
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, sep, value = line.partition("=")
            value = value.strip()
            if not sep:
                raise DamagedMetadata(where, f"line {line[:30]!r} is not `key = value`")
            quoted = len(value) >= 2 and value[0] == value[-1] == '"'
            values[key.strip()] = value[1:-1] if quoted else _toml_int(value)
    if isinstance(values.get("system_identifier"), int):  # unquoted: older writers
        values["system_identifier"] = str(values["system_identifier"])
    fields = Fields(values, where)
    version = fields.integer("format", minimum=1)
    if version > FORMAT:
        raise OperationFailed(
            f"repository {url} has format {version}; this chainlens-ops understands up to {FORMAT}",
            hint="upgrade chainlens-ops",
        )
    seg_size = fields.integer("wal_segment_size", minimum=1)
    if seg_size & (seg_size - 1) or not 1 << 20 <= seg_size <= 1 << 30:
        raise fields.damaged("wal_segment_size", "is not a power of two from 1 MB to 1 GB")
    return RepoMarker(
        format=version,
        system_identifier=int(fields.parsed("system_identifier", int, "a number")),
        wal_segment_size=seg_size,
        pg_version=fields.integer("pg_version", 0),
        created_at=fields.text("created_at", ""),
        created_by=fields.text("created_by", ""),
        repository_id=fields.text("repository_id", ""),
    )


def _toml_int(value: str) -> object:
    try:
        return int(value)
    except ValueError:
        return value
