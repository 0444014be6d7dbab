"""Every key the repository uses, in one place (keys are '/'-separated, the same on
every backend):

    chainlens-repo.toml                 the marker (plaintext): format, the cluster it
                                        serves, and for an encrypted repository the
                                        wrapped data key and where its key-encryption
                                        key lives (never a secret); see
                                        chainlens_ops.repository.marker
    locks/repository.lock               the repository lock (plaintext JSON: who holds it)
    locks/takeover-<token>-<generation> a same-host takeover claim (plaintext)
    locks/claims/<token>.json           a running restore's or drill's claim on what it
                                        reads (plaintext, like the lock: repository.claim)
    wal/<TTTTTTTTXXXXXXXX>/<segment>    WAL segments, `.partial` segments and `.backup`
                                        files, grouped by timeline + log id (256 files
                                        per folder at 16 MB segments)
    wal/history/<TTTTTTTT>.history      timeline history files (never overwritten)
    backups/<id>/manifest.json          a backup's manifest (written last: it publishes
                                        the backup)
    backups/<id>/<object>               a backup's data objects, by layout:
        dump.pgc.zst                      logical: one custom-format dump
        dump.d/<file>.zst                 logical `--jobs`: pg_dump's directory format
        base.tar.zst                      base (tar layout): pg_basebackup's tar stream
        files.json.zst, data/<bundle>     files layout: the file map and block bundles
    backups/<id>/<kind>-<stamp>Z.json   proofs: verify and drill records
    backups/<id>/pin.json               a pin: retention never removes the backup
    restore-points/<name>.json          the restore-point catalog, one entry per point
    restore-points/scanned/<seg>.json   restore-point scan state: what a WAL segment holds

Every object but the marker and the lock objects goes through the codec of
chainlens_ops.repository.codec (encrypted and authenticated when the repository is
encrypted). Standard library only: on the `wal push` path.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from chainlens_ops.pg.walnames import WalName

MARKER_KEY = "chainlens-repo.toml"
LOCKS_PREFIX = "locks/"
LOCK_KEY = LOCKS_PREFIX + "repository.lock"
TAKEOVER_PREFIX = LOCKS_PREFIX + "takeover-"
CLAIMS_PREFIX = LOCKS_PREFIX + "claims/"
WAL_PREFIX = "wal/"
HISTORY_PREFIX = "wal/history/"
BACKUPS_PREFIX = "backups/"
MANIFEST_NAME = "manifest.json"
PIN_NAME = "pin.json"
# A backup's data objects (backups/<id>/<name>), by layout.
DUMP_NAME = "dump.pgc.zst"
DUMP_FOLDER = "dump.d/"
BASE_TAR_NAME = "base.tar.zst"
FILE_MAP_NAME = "files.json.zst"
DATA_FOLDER = "data/"
RESTORE_POINTS_PREFIX = "restore-points/"
SCANNED_PREFIX = RESTORE_POINTS_PREFIX + "scanned/"


def is_plaintext(key: str) -> bool:
    """The marker and the locks stay readable without a key: a tool must find the
    wrapped data key, and a lock must be breakable by an operator who has none."""
    return key == MARKER_KEY or key.startswith(LOCKS_PREFIX)


def wal_key(name: WalName) -> str:
    from chainlens_ops.pg.walnames import HISTORY

    if name.kind == HISTORY:
        return HISTORY_PREFIX + name.name
    return f"{WAL_PREFIX}{name.name[:16]}/{name.name}"


def backup_prefix(backup_id: str) -> str:
    return f"{BACKUPS_PREFIX}{backup_id}/"


def manifest_key(backup_id: str) -> str:
    return backup_prefix(backup_id) + MANIFEST_NAME


def backup_object_key(backup_id: str, name: str) -> str:
    """A data object of a backup: `name` is one of the names above (`dump.pgc.zst`,
    `dump.d/toc.dat.zst`, `data/<bundle>`)."""
    return backup_prefix(backup_id) + name


def pin_key(backup_id: str) -> str:
    return backup_prefix(backup_id) + PIN_NAME


def proof_key(backup_id: str, kind: str, stamp: str) -> str:
    """`stamp`: YYYYmmddTHHMMSS (UTC)."""
    return f"{backup_prefix(backup_id)}{kind}-{stamp}Z.json"


def restore_point_key(name: str) -> str:
    return f"{RESTORE_POINTS_PREFIX}{name}.json"


def scan_state_key(segment: str) -> str:
    return f"{SCANNED_PREFIX}{segment}.json"
