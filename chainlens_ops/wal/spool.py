"""The spool: a local folder outside `pg_wal` for work done ahead of PostgreSQL's calls.

    <spool>/<repo id>/pushed/<name>     look-ahead record: this file (size, sha256) is
                                        durable in the repository under this key
    <spool>/<repo id>/prefetch/<name>   an object downloaded ahead of `wal fetch`,
                                        still in the repository format (verified on use)

`<repo id>` is a hash of the repository URL, so a spool never serves one repository's
work to another. Everything here is a cache: losing it costs a re-upload (an identical
duplicate, which succeeds) or a re-download, never data. Files are written to a temp
name and renamed, so a reader sees whole files or none.

Default location: next to the data folder (`<data>/../chainlens-ops-spool-<data name>`),
derived from the `pg_wal/...` path PostgreSQL passes; `--spool` or `spool_dir`
(CHAINLENS_SPOOL_DIR) override it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path

from chainlens_ops.wal.objfmt import Digest

DIR_MODE = 0o700
FILE_MODE = 0o600


def default_spool_root(wal_path: str) -> Path | None:
    """`<data>/../chainlens-ops-spool-<data>` for a path inside `<data>/pg_wal`, else None.

    The path is made absolute without resolving symlinks: a `pg_wal` symlinked to
    another disk still names the data folder it belongs to.
    """
    folder = os.path.dirname(os.path.abspath(wal_path))
    if os.path.basename(folder) != "pg_wal":
        return None
    data = os.path.dirname(folder)
    return Path(os.path.dirname(data)) / f"chainlens-ops-spool-{os.path.basename(data)}"


class Spool:
    def __init__(self, root: Path, repo_url: str) -> None:
        self.root = root
        self.base = root / hashlib.sha256(repo_url.encode()).hexdigest()[:16]
        self.pushed = self.base / "pushed"
        self.prefetch = self.base / "prefetch"

    def ready(self, folder: Path) -> bool:
        """Create `folder` (0700) if needed; False if this user cannot use it."""
        try:
            folder.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        except OSError:
            return False
        return os.access(folder, os.W_OK | os.X_OK)

    # -- look-ahead records -----------------------------------------------------------

    def record_pushed(self, name: str, key: str, digest: Digest) -> None:
        body = json.dumps({"key": key, "size": digest.size, "sha256": digest.sha256})
        write_atomic(self.pushed / name, body.encode())

    def pushed_record(self, name: str) -> tuple[str, Digest] | None:
        try:
            data = json.loads((self.pushed / name).read_bytes())
            return str(data["key"]), Digest(int(data["size"]), str(data["sha256"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def forget_pushed(self, name: str) -> None:
        _unlink(self.pushed / name)

    def pushed_names(self) -> set[str]:
        try:
            return {p.name for p in self.pushed.iterdir() if not p.name.startswith(".")}
        except OSError:
            return set()

    # -- prefetched objects -----------------------------------------------------------

    def prefetched(self, name: str) -> Path | None:
        path = self.prefetch / name
        return path if path.is_file() else None

    def clear_prefetch(self, keep: frozenset[str] | set[str] = frozenset()) -> None:
        """Remove prefetched objects (and dead temp files) not in `keep`."""
        try:
            entries = list(self.prefetch.iterdir())
        except OSError:
            return
        for path in entries:
            if path.name not in keep:
                _unlink(path)


def write_atomic(path: Path, data: bytes) -> None:
    """Small file, temp + rename: a reader sees the whole file or none (no fsync: a
    spool entry lost in a crash costs only repeated work)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, FILE_MODE)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        _unlink(tmp)
        raise


def _unlink(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()
