"""The spool: a local folder outside `pg_wal` for work done ahead of PostgreSQL's calls.

    <spool>/<repo id>/pushed/<name>     look-ahead record: this file, as identified by
                                        (device, inode, size, mtime_ns, ctime_ns), is
                                        durable in the repository under this key; three
                                        lines: the key, the five numbers, the
                                        repository's identity (plain text: parsing it
                                        must not import json)
    <spool>/<repo id>/repository-identity  the repository marker's identity (system
                                        identifier + random id) as last read, and
                                        (mtime) when: look-ahead records name it and
                                        count only while the repository still has it
    <spool>/<repo id>/prefetch/<name>   an object downloaded ahead of `wal fetch`,
                                        still in the repository format (verified on use)

`<repo id>` is the repository URL made safe for a file name plus its CRC-32, so a spool
never serves one repository's work to another (not sha256: hashlib costs ~6 ms to import
on the `wal push` path). Everything here is a cache: losing it costs a re-upload (an identical
duplicate, which succeeds) or a re-download, never data. Files are written to a temp
name and renamed, so a reader sees whole files or none.

Default location: next to the data folder (`<data>/../chainlens-ops-spool-<data name>`),
derived from the `pg_wal/...` path PostgreSQL passes; `--spool` or `spool_dir`
(CHAINLENS_SPOOL_DIR) override it.
"""

from __future__ import annotations

import os
import zlib

from chainlens_ops.core.atomicfile import unlink_quietly as _unlink
from chainlens_ops.core.atomicfile import write_bytes_atomic

DIR_MODE = 0o700
FILE_MODE = 0o600


def default_spool_root(wal_path: str) -> str | None:
    """`<data>/../chainlens-ops-spool-<data>` for a path inside `<data>/pg_wal`, else None.

    The path is made absolute without resolving symlinks: a `pg_wal` symlinked to
    another disk still names the data folder it belongs to.
    """
    folder = os.path.dirname(os.path.abspath(wal_path))
    if os.path.basename(folder) != "pg_wal":
        return None
    data = os.path.dirname(folder)
    return os.path.join(os.path.dirname(data), f"chainlens-ops-spool-{os.path.basename(data)}")


class Spool:
    def __init__(self, root: str, repo_url: str) -> None:
        self.root = root
        self.base = os.path.join(root, repo_id(repo_url))
        self.pushed = os.path.join(self.base, "pushed")
        self.prefetch = os.path.join(self.base, "prefetch")

    def ready(self, folder: str) -> bool:
        """Create `folder` (0700) if needed; False if this user cannot use it."""
        try:
            os.makedirs(folder, mode=DIR_MODE, exist_ok=True)
        except OSError:
            return False
        return os.access(folder, os.W_OK | os.X_OK)

    # -- look-ahead records -----------------------------------------------------------

    def record_pushed(
        self, name: str, key: str, identity: tuple[int, ...], repository: str
    ) -> None:
        """`repository` is the marker's identity (`RepoMarker.identity`)."""
        body = f"{key}\n{' '.join(map(str, identity))}\n{repository}\n"
        # No fsync: a spool entry lost in a crash costs only repeated work.
        write_bytes_atomic(os.path.join(self.pushed, name), body.encode(), durable=False)

    def pushed_record(self, name: str) -> tuple[str, tuple[int, ...], str] | None:
        """(key, file identity, repository identity); None if absent or unreadable (a
        record from an older version, without the repository's identity, too)."""
        try:
            with open(os.path.join(self.pushed, name), "rb") as fh:
                key, numbers, repository = fh.read(4096).decode().split("\n")[:3]
            identity = tuple(int(n) for n in numbers.split())
        except (OSError, ValueError):
            return None
        return (key, identity, repository) if len(identity) == 5 and repository else None

    # -- the repository's identity, as last verified ------------------------------------

    def verified_repository(self, max_age_s: float) -> str | None:
        """The repository identity verified less than `max_age_s` ago, else None."""
        path = os.path.join(self.base, "repository-identity")
        try:
            if os.stat(path).st_mtime < _now() - max_age_s:
                return None
            with open(path, "rb") as fh:
                return fh.read(4096).decode().strip() or None
        except (OSError, ValueError):
            return None

    def note_verified_repository(self, identity: str) -> None:
        if self.ready(self.base):
            path = os.path.join(self.base, "repository-identity")
            write_bytes_atomic(path, f"{identity}\n".encode(), durable=False)

    def forget_pushed(self, name: str) -> None:
        _unlink(os.path.join(self.pushed, name))

    def pushed_names(self) -> set[str]:
        try:
            return {n for n in os.listdir(self.pushed) if not n.startswith(".")}
        except OSError:
            return set()

    # -- prefetched objects -----------------------------------------------------------

    def prefetched(self, name: str) -> str | None:
        path = os.path.join(self.prefetch, name)
        return path if os.path.isfile(path) else None

    def clear_prefetch(self, keep: frozenset[str] | set[str] = frozenset()) -> None:
        """Remove prefetched objects (and dead temp files) not in `keep`."""
        try:
            entries = os.listdir(self.prefetch)
        except OSError:
            return
        for entry in entries:
            if entry not in keep:
                _unlink(os.path.join(self.prefetch, entry))


def _now() -> float:
    import time

    return time.time()


def repo_id(url: str) -> str:
    safe = "".join(c if c.isalnum() or c in "-." else "_" for c in url)[:80]
    return f"{safe}-{zlib.crc32(url.encode()):08x}"
