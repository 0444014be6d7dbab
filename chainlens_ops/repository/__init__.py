"""The repository: where one PostgreSQL cluster's WAL, backups and restore points live.

A repository serves exactly one cluster (like a pgBackRest stanza), identified by the
system identifier that `pg_controldata` shows and every WAL segment header carries.
It is a storage URL (`file:///abs/path`, `/abs/path` or `s3://bucket/prefix`, one
backend per scheme: chainlens_ops.storage). The package is the only door to its bytes:

    layout.py   every key the repository uses (documented there, once)
    marker.py   the format marker (format version, cluster, wrapped data key)
    codec.py    the pipeline every object passes through (compress, encrypt, authenticate)
    walcodec.py   its compression stage for WAL files (zstd envelope, name and size)
    datacodec.py  its compression stage for backup data (zstd stream, manifest checks)
    crypto.py   envelope encryption: the data key and its key-encryption key (file or KMS)
    admin.py    `repo init`, `repo info`, `repo rotate-key`, `repo encrypt`
    stores.py   typed stores over `storage` (`Repository.wal`, `.points`, `.proofs`,
                `.backups`, `.locks`): operations code asks them instead of building
                keys, and never holds a Storage (tests/unit/test_layers.py)
    lock.py, claim.py   the repository lock and restores' claims (via `.locks`)

`Repository.storage` is the codec's door (RepositoryStorage), for the stores;
`Repository.backend` the raw backend, for the marker and housekeeping (the methods
below) alone. A marker with a higher `format` than this tool knows is refused, so an
old tool never writes into a repository laid out by a newer one.

This module is on the `wal push` hot path: it imports no boto3, psycopg, Typer or
cipher (OpenSSL through aead.py, only when the repository is encrypted).
"""

from __future__ import annotations

import _thread
import io
import os

from chainlens_ops import __version__
from chainlens_ops.core.errors import ConfigError, OperationFailed
from chainlens_ops.core.record import replace
from chainlens_ops.repository import layout
from chainlens_ops.repository.codec import RepositoryStorage
from chainlens_ops.repository.layout import (
    BACKUPS_PREFIX,
    HISTORY_PREFIX,
    MARKER_KEY,
    RESTORE_POINTS_PREFIX,
    WAL_PREFIX,
)
from chainlens_ops.repository.marker import FORMAT, FORMAT_PLAIN, RepoMarker, parse_marker
from chainlens_ops.storage import AlreadyExists, NotFound, open_storage

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    from chainlens_ops.pg.walnames import WalName
    from chainlens_ops.repository.codec import Sealer
    from chainlens_ops.repository.stores import (
        BackupStore,
        LockStore,
        PointStore,
        ProofStore,
        WalStore,
    )
    from chainlens_ops.settings.config import Settings
    from chainlens_ops.storage import ObjectInfo
    from chainlens_ops.storage.protocol import Storage

__all__ = [
    "BACKUPS_PREFIX",
    "FORMAT",
    "HISTORY_PREFIX",
    "MARKER_KEY",
    "RESTORE_POINTS_PREFIX",
    "WAL_PREFIX",
    "RepoMarker",
    "Repository",
    "RepositoryUnavailable",
    "WrongCluster",
    "open_repository",
    "repo_url",
    "repository_for",
]


class WrongCluster(OperationFailed):
    """A WAL file or database belongs to another cluster than the repository."""


class RepositoryUnavailable(OperationFailed):
    """The repository cannot say whether an object is absent: its root or marker is
    missing (an unmounted volume, a deleted folder, the wrong path). Never NotFound."""


class Repository:
    """One repository. The storage backend is opened on first use, so a caller that
    needs only the URL (e.g. `wal push`'s look-ahead fast path) never imports boto3.
    `settings`: its backend's parsed settings (`repository_for` picks them), or None.

    `key_file`: the key-encryption key of an encrypted repository whose marker says
    `key_source = "file"` (CHAINLENS_REPO_KEY_FILE or `[repository] key_file`).
    `lock_ttl_s`: the life of its lock and restores' claims after their last heartbeat
    (`[repository] lock_ttl`; None: its default)."""

    def __init__(
        self,
        url: str,
        settings: object | None = None,
        *,
        key_file: str | None = None,
        lock_ttl_s: float | None = None,
    ) -> None:
        self.url = url
        self._settings = settings  # its backend's, opaque here (chainlens_ops.storage)
        self.key_file = key_file
        self.lock_ttl_s = lock_ttl_s
        self._backend: Storage | None = None
        self._storage: RepositoryStorage | None = None
        # Look-ahead and prefetch threads share one repository: one backend (one boto3
        # client, ~15 MB and ~0.3 s) for all of them. `_thread`: the hot path avoids
        # importing `threading`.
        self._storage_lock = _thread.allocate_lock()
        self._marker: RepoMarker | None = None
        self._sealer: Sealer | None = None

    @property
    def backend(self) -> Storage:
        """The raw backend: the marker and housekeeping only; objects go through
        `storage`."""
        if self._backend is None:
            with self._storage_lock:
                if self._backend is None:
                    self._backend = open_storage(self.url, self._settings)
        return self._backend

    @property
    def storage(self) -> RepositoryStorage:
        """The door to the repository's objects (the codec: chainlens_ops.repository.codec)."""
        if self._storage is None:
            self._storage = RepositoryStorage(self.backend, self.sealer)
        return self._storage

    @property
    def wal(self) -> WalStore:
        """The WAL archive (chainlens_ops.repository.stores)."""
        from chainlens_ops.repository.stores import WalStore

        return WalStore(self.storage)

    @property
    def points(self) -> PointStore:
        """Restore points and their WAL scan state (chainlens_ops.repository.stores)."""
        from chainlens_ops.repository.stores import PointStore

        return PointStore(self.storage)

    @property
    def proofs(self) -> ProofStore:
        """Backups' proofs and pins (chainlens_ops.repository.stores)."""
        from chainlens_ops.repository.stores import ProofStore

        return ProofStore(self.storage)

    @property
    def backups(self) -> BackupStore:
        """Backups: manifests and data objects (chainlens_ops.repository.stores)."""
        from chainlens_ops.repository.stores import BackupStore

        return BackupStore(self.storage)

    @property
    def locks(self) -> LockStore:
        """The repository lock and restores' claims (chainlens_ops.repository.stores)."""
        from chainlens_ops.repository.stores import LockStore

        return LockStore(self.storage, ttl_s=self.lock_ttl_s)

    @property
    def display(self) -> str:
        return self.url

    def require_present(self) -> None:
        """For commands that read the repository: a root that does not exist is an
        error ("does not exist"), never an empty archive or catalog."""
        if not self.backend.exists():
            raise OperationFailed(
                f"repository {self.url} does not exist", hint="check the path (--repo, repo =)"
            )

    # -- housekeeping: what killed writers left (the backend finds it) ------------------

    def stale_leftovers(self) -> tuple[str, ...]:
        """Temp files and uploads of killed writers, by age (`wal check` reports them)."""
        return self.backend.stale_leftovers()

    def remove_stale_leftovers(self) -> int:
        """Remove what `stale_leftovers` finds; how many were removed."""
        return self.backend.remove_stale_leftovers()

    def housekeep_now_and_then(self, stamp: str | None) -> None:
        """`wal push`'s cheap, rate-limited sweep (`stamp`: a file noting the last run)."""
        self.backend.housekeep_now_and_then(stamp)

    def remove_incomplete(
        self, select: Callable[[ObjectInfo], bool], *, dry_run: bool = False
    ) -> list[ObjectInfo]:
        """Writes anywhere in the repository that killed writers never published and
        `select` picks, removed unless `dry_run` (see Storage.remove_incomplete)."""
        return self.backend.remove_incomplete("", select, dry_run=dry_run)

    # -- the marker -------------------------------------------------------------------

    def stored_marker(self, *, fresh: bool = False) -> RepoMarker | None:
        """The marker as stored, bound to a cluster or not (after `repo init`)."""
        if self._marker is None or fresh:
            try:
                with self.backend.open(MARKER_KEY) as fh:
                    raw = fh.read(1024 * 1024)
            except NotFound:
                return None
            self._marker = parse_marker(raw, self.url)
        return self._marker

    def marker(self, *, fresh: bool = False) -> RepoMarker | None:
        """The marker, or None for a repository nothing has been written to yet.
        `fresh` reads it again (the repository may have gone away since)."""
        marker = self.stored_marker(fresh=fresh)
        return marker if marker is not None and marker.bound else None

    def write_marker(
        self, marker: RepoMarker, *, if_absent: bool = False, data_key: bytes | None = None
    ) -> None:
        """Store `marker`; an authenticated one is tagged here, with `data_key` (a new
        key: `repo init`, `repo encrypt`) or the stored marker's (a changed field)."""
        if marker.authenticated:
            from chainlens_ops.repository.crypto import aesgcm, sign_marker

            if data_key is not None:
                aead = aesgcm(data_key)
            else:
                sealer = self.sealer()
                if sealer is None:
                    raise OperationFailed(f"repository {self.url}: no data key to tag its marker")
                aead = sealer.ready()
            marker = sign_marker(marker, aead)
        self.backend.put(MARKER_KEY, io.BytesIO(marker.to_bytes()), if_absent=if_absent)
        self._marker = marker
        self._sealer = None

    def new_marker(self, **fields: object) -> RepoMarker:
        import datetime as dt  # only here: the hot path rarely creates a marker

        values: dict[str, object] = {
            "format": FORMAT_PLAIN,
            "system_identifier": 0,
            "wal_segment_size": 0,
            "pg_version": 0,
            "created_at": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "created_by": f"chainlens-ops {__version__}",
            "repository_id": os.urandom(8).hex(),
        }
        values.update(fields)
        return RepoMarker(**values)  # type: ignore[arg-type]

    def ensure_marker(
        self, system_identifier: int, wal_segment_size: int, pg_version: int
    ) -> RepoMarker:
        """The marker, written now if missing; WrongCluster if it names another cluster.

        Two first pushers may race: the conditional put lets exactly one marker win and
        the loser re-reads it, so both check against the same cluster. A marker written
        by `repo init` is bound to the first cluster that pushes, then read back.
        """
        identity = {
            "system_identifier": system_identifier,
            "wal_segment_size": wal_segment_size,
            "pg_version": pg_version,
        }
        marker = self.stored_marker()
        if marker is None:
            fresh = self.new_marker(**identity)
            try:
                self.write_marker(fresh, if_absent=True)
                marker = fresh
            except AlreadyExists:
                marker = self.stored_marker(fresh=True)
                if marker is None:  # pragma: no cover - deleted between put and read
                    raise OperationFailed(f"repository {self.url}: marker vanished") from None
        if not marker.bound:
            self.write_marker(replace(marker, **identity))
            marker = self.stored_marker(fresh=True)
            if marker is None:  # pragma: no cover - deleted between put and read
                raise OperationFailed(f"repository {self.url}: marker vanished")
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
        if marker is not None and marker.bound and marker.system_identifier != system_identifier:
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
        marker = self.stored_marker(fresh=True)
        if marker is None:
            raise RepositoryUnavailable(
                f"{what} is not in repository {self.url}, but the repository itself is "
                f"missing or empty (no {MARKER_KEY}): not answering 'absent'",
                hint="is the repository volume mounted and the path right?",
            )
        if system_identifier is not None:
            self.check_cluster(system_identifier, what="this data folder", marker=marker)

    # -- encryption ---------------------------------------------------------------------

    def sealer(self) -> Sealer | None:
        """The data key of an encrypted repository (None: a plain one). Unwrapped once per
        process; KeyUnavailable (exit 3) when it cannot be."""
        marker = self.stored_marker()
        if marker is None or not marker.encrypted:
            return None
        if self._sealer is None:
            from chainlens_ops.repository.codec import Sealer
            from chainlens_ops.repository.crypto import check_marker, unwrap_data_key

            key_file, url = self.key_file, self.url
            self._sealer = Sealer(
                lambda: unwrap_data_key(marker, key_file=key_file, url=url),
                plain_allowed=marker.plain_objects,
                check=lambda aead: check_marker(marker, aead, url),
            )
        return self._sealer

    def prepare_key(self) -> bool:
        """Start unwrapping an encrypted repository's data key in the background, for a
        caller about to do long GIL-free work first (`wal push` compresses its segment);
        whether a thread started."""
        sealer = self.sealer()
        return sealer is not None and sealer.prepare_in_background()

    # -- keys -------------------------------------------------------------------------

    @staticmethod
    def wal_key(name: WalName) -> str:
        return layout.wal_key(name)


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


def repository_for(settings: Settings, url: str) -> Repository:
    """The one way from settings to a repository: its backend's settings and its key."""
    from chainlens_ops.storage import backend_for

    backend = backend_for(url)
    return Repository(
        url,
        backend.settings_from(settings.storage),
        key_file=settings.repo_key_file,
        lock_ttl_s=settings.repo_lock_ttl_s,
    )


def open_repository(
    settings: Settings, *, db: str | None = None, repo: str | None = None
) -> Repository:
    """The repository for `db` (see `repo_url`), with the configured settings."""
    return repository_for(settings, repo_url(settings, db=db, repo=repo))
