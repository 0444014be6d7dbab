"""`chainlens-ops backup verify`: re-read every object of a backup and check it.

Every object: its size and sha256 against the manifest, and its zstd frame (zstd's own
content checksum). Then what the object holds:

- logical: `pg_restore --list` parses the dump's table of contents (the rest of the
  object is still read and checked); a `--jobs` backup (pg_dump's directory format,
  one object per file) has its `toc.dat` fetched into a spool folder for
  `pg_restore --list`, and every table's data file the TOC names must be in the backup;
- base: the tar is read to its end (each header's checksum, each member's length), and
  each file is checked against the `backup_manifest` that pg_basebackup put in the tar:
  present, same size, same SHA-256, and the manifest's own checksum. These are
  pg_verifybackup's file checks, done while streaming: PostgreSQL 15's pg_verifybackup
  reads only an extracted (plain-format) backup. Its WAL check is `wal check`'s job.

The first problem in an object names it; other objects are still checked.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tarfile
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from typing import BinaryIO

from chainlens_ops.backup.chaincheck import check_chain
from chainlens_ops.backup.manifest import (
    BASE,
    FILES_LAYOUT,
    LOGICAL,
    BackupManifest,
    BackupObject,
    read_catalog,
    read_manifest,
)
from chainlens_ops.backup.parallel import (
    TOC,
    fetch_directory,
    is_directory,
    member_name,
    spool_folder,
    spool_root,
)
from chainlens_ops.backup.proofs import VERIFY, record_proof
from chainlens_ops.core.errors import ChainlensError, OperationFailed, PgCommandError
from chainlens_ops.core.outcome import failed_exit
from chainlens_ops.pg.binaries import find_binary, major_of
from chainlens_ops.pg.process import PgStream, run_pg
from chainlens_ops.repository import Repository
from chainlens_ops.repository.datacodec import CheckedReader, CorruptBackupObject
from chainlens_ops.restore.window import missing_own_wal

_CHUNK = 1024 * 1024


@dataclass(frozen=True)
class ObjectCheck:
    key: str
    ok: bool
    detail: str


@dataclass(frozen=True)
class VerifyResult:
    id: str
    kind: str
    checks: list[ObjectCheck] = field(default_factory=list)
    recorded: str | None = None  # the key of the verify record, when it could be stored

    @property
    def ok(self) -> bool:
        return all(check.ok for check in self.checks)

    @property
    def exit_code(self) -> int:
        return failed_exit(self.ok)

    @property
    def failed(self) -> list[ObjectCheck]:
        return [check for check in self.checks if not check.ok]


def verify_backup(
    repo: Repository,
    backup_id: str | None,
    *,
    extract_to: str | None = None,
    spool_dir: str | None = None,
) -> VerifyResult:
    """Check backup `backup_id`, or the newest valid one when None. With `extract_to`
    (a folder with room for the whole database), a base backup is also extracted there
    and checked by PostgreSQL's own pg_verifybackup, then the extraction is removed.
    `spool_dir`: where a directory-format dump's `toc.dat` is fetched to."""
    if backup_id is None:
        valid = read_catalog(repo).valid
        if not valid:
            raise OperationFailed(f"repository {repo.url} holds no backup to verify")
        manifest = valid[0]
    else:
        manifest = read_manifest(repo, backup_id)
    when = datetime.now(UTC)
    if manifest.physical and manifest.layout == FILES_LAYOUT:
        checks = [ObjectCheck(c.key, c.ok, c.detail) for c in check_chain(repo, manifest)]
    elif manifest.kind == LOGICAL and is_directory(manifest):
        checks = _check_directory(repo, manifest, spool_root(spool_dir))
    else:
        checks = [_check_object(repo, manifest, obj, extract_to) for obj in manifest.objects]
    if not manifest.objects:
        checks.append(ObjectCheck(manifest.id, False, "the manifest lists no objects"))
    if manifest.physical:
        checks.append(_check_own_wal(repo, manifest))
    result = VerifyResult(id=manifest.id, kind=manifest.kind, checks=checks)
    # The proof `backup list` and `status` show; a repository that takes no writes
    # (read-only mount) still gets its answer, only unrecorded.
    failed = result.failed
    body = {
        "ok": result.ok,
        "error": failed[0].detail if failed else None,
        "checks": [asdict(c) for c in checks],
        "pg_verifybackup": bool(extract_to),
    }
    with contextlib.suppress(OSError, ChainlensError):
        result = replace(result, recorded=record_proof(repo, manifest.id, VERIFY, when, body))
    return result


def _check_own_wal(repo: Repository, manifest: BackupManifest) -> ObjectCheck:
    """The WAL from the backup's start to its stop segment: without it the backup can
    never be restored, however good its tar is. A backup that prune keeps only as the
    base of a later incremental has no WAL of its own any more, by design: it is
    restored through that incremental, and says so."""
    own = f"{manifest.start_wal} .. {manifest.stop_wal or manifest.start_wal}"
    missing = missing_own_wal(repo, manifest)
    if missing is not None:
        child = _restored_through(repo, manifest)
        if child is not None:
            return ObjectCheck(manifest.id, True, f"its own WAL ({own}) was pruned: it is "
                               f"kept as the base of {child}, which restores")  # fmt: skip
        return ObjectCheck(manifest.id, False, f"WAL segment {missing} is missing from the "
                           f"archive: backup {manifest.id} needs its own WAL ({own}) to be "
                           "restorable at all")  # fmt: skip
    return ObjectCheck(manifest.id, True, f"its own WAL ({own}) is archived")


def _restored_through(repo: Repository, manifest: BackupManifest) -> str | None:
    """The newest valid backup whose chain holds `manifest` and whose own WAL is
    archived, if any (None: `manifest` is no one's base, or none of its descendants can
    be restored either)."""
    catalog = read_catalog(repo)
    for later in catalog.valid:
        if later.id == manifest.id or later.parent is None:
            continue
        try:
            chain = [b.id for b in catalog.chain(later)]
        except OperationFailed:
            continue
        if manifest.id in chain and missing_own_wal(repo, later) is None:
            return later.id
    return None


def _check_object(
    repo: Repository, manifest: BackupManifest, obj: BackupObject, extract_to: str | None
) -> ObjectCheck:
    try:
        with CheckedReader(repo.backups, obj) as reader:
            if manifest.kind == BASE and extract_to:
                detail = _check_extracted(reader, manifest, extract_to)
            elif manifest.kind == BASE:
                detail = _check_tar(reader)
            else:
                detail = _check_dump(reader, manifest.server_version)
            reader.drain()
    except CorruptBackupObject as exc:
        return ObjectCheck(obj.key, False, exc.one_line())
    except ChainlensError as exc:
        return ObjectCheck(obj.key, False, f"{obj.key}: {exc.one_line()}")
    return ObjectCheck(obj.key, True, f"sha256 ok, {detail}")


def _check_dump(reader: CheckedReader, server_version: int) -> str:
    """pg_restore --list must read the dump's table of contents (counted as it streams:
    a schema of many thousands of objects lists long)."""
    pg_restore = find_binary("pg_restore", major_of(server_version))
    entries = 0
    pending = b""
    try:
        with PgStream([pg_restore, "--list"], stdin=reader) as listing:  # type: ignore[arg-type]
            while chunk := listing.read(_CHUNK):
                *lines, pending = (pending + chunk).split(b"\n")
                entries += sum(1 for line in lines if line and not line.startswith(b";"))
    except PgCommandError as exc:
        raise OperationFailed(f"pg_restore --list cannot read it: {exc.one_line()}") from None
    return f"pg_restore --list reads {entries} entries"


def _check_directory(repo: Repository, manifest: BackupManifest, root: str) -> list[ObjectCheck]:
    """Every object read and checked; `toc.dat` also listed by pg_restore, and each
    table's data file it names present in the backup."""
    checks: list[ObjectCheck] = []
    toc: BackupObject | None = None
    members: set[str] = set()
    for obj in manifest.objects:
        try:
            name = member_name(manifest, obj)
        except OperationFailed as exc:
            checks.append(ObjectCheck(obj.key, False, exc.one_line()))
            continue
        members.add(name)
        if name == TOC:
            toc = obj
            continue
        try:
            with CheckedReader(repo.backups, obj) as reader:
                reader.drain()
        except CorruptBackupObject as exc:
            checks.append(ObjectCheck(obj.key, False, exc.one_line()))
            continue
        checks.append(ObjectCheck(obj.key, True, f"sha256 ok, {name}"))
    if toc is None:
        checks.insert(0, ObjectCheck(manifest.id, False, f"the backup has no {TOC}"))
        return checks
    try:
        with spool_folder(root, f"verify-{manifest.id}") as folder:
            fetch_directory(repo.backups, manifest, [toc], folder)
            detail = _list_directory(folder, members, manifest)
    except CorruptBackupObject as exc:
        checks.insert(0, ObjectCheck(toc.key, False, exc.one_line()))
    except ChainlensError as exc:
        checks.insert(0, ObjectCheck(toc.key, False, f"{toc.key}: {exc.one_line()}"))
    else:
        checks.insert(0, ObjectCheck(toc.key, True, f"sha256 ok, {detail}"))
    return checks


def _list_directory(folder: str, members: set[str], manifest: BackupManifest) -> str:
    pg_restore = find_binary("pg_restore", major_of(manifest.server_version))
    result = run_pg([pg_restore, "--list", folder], check=False)
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise OperationFailed(f"pg_restore --list cannot read it: {last}")
    entries = [line for line in result.stdout.splitlines() if line and not line.startswith(";")]
    data_files = 0
    for line in entries:
        dump_id, _, rest = line.partition(";")
        fields = rest.split()
        if fields[2:4] == ["TABLE", "DATA"]:
            wanted = f"{dump_id.strip()}.dat"
        elif fields[2:3] == ["BLOBS"]:
            wanted = "blobs.toc"
        else:
            continue
        if wanted not in members:
            raise OperationFailed(
                f"the dump's table of contents needs {wanted}, which is not in the backup"
            )
        data_files += 1
    return f"pg_restore --list reads {len(entries)} entries, all {data_files} data files present"


def _check_extracted(reader: CheckedReader, manifest: BackupManifest, extract_to: str) -> str:
    folder = os.path.join(extract_to, f"chainlens-verify-{manifest.id}")
    try:
        os.makedirs(folder, mode=0o700)
    except OSError as exc:
        raise OperationFailed(f"cannot create {folder}: {exc.strerror or exc}") from None
    try:
        detail = _check_tar(reader, folder)
        tool = find_binary("pg_verifybackup", major_of(manifest.server_version))
        # -n: WAL is not in the tar (-X none); `wal check` covers the archive.
        result = run_pg([tool, "-n", folder], check=False)
        if result.returncode != 0:
            last = (result.stderr.strip().splitlines() or ["no output"])[-1]
            raise OperationFailed(f"pg_verifybackup: {last}")
        return f"{detail}; pg_verifybackup ok"
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _check_tar(reader: CheckedReader, extract_to: str | None = None) -> str:
    files: dict[str, tuple[int, str]] = {}
    manifest_raw: bytes | None = None
    try:
        with tarfile.open(fileobj=reader, mode="r|") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                fh = tar.extractfile(member)
                assert fh is not None
                digest = hashlib.sha256()
                size = 0
                keep = member.name == "backup_manifest"
                kept = bytearray()
                out = _create(extract_to, member.name) if extract_to else None
                while chunk := fh.read(_CHUNK):
                    digest.update(chunk)
                    size += len(chunk)
                    if keep:
                        kept += chunk
                    if out is not None:
                        out.write(chunk)
                if out is not None:
                    out.close()
                if size != member.size:
                    raise OperationFailed(f"tar member {member.name} is truncated")
                if keep:
                    manifest_raw = bytes(kept)
                else:
                    files[member.name] = (size, digest.hexdigest())
    except tarfile.TarError as exc:
        raise OperationFailed(f"not a valid tar: {exc}") from None
    if manifest_raw is None:
        raise OperationFailed("the tar holds no backup_manifest")
    return _check_against_manifest(files, manifest_raw)


def _create(folder: str, name: str) -> BinaryIO:
    """A file for tar member `name` under `folder`; never outside it."""
    parts = name.split("/")
    if name.startswith("/") or ".." in parts:
        raise OperationFailed(f"tar member {name!r} points outside the backup")
    path = os.path.join(folder, *parts)
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    return open(path, "xb")


def _check_against_manifest(files: dict[str, tuple[int, str]], raw: bytes) -> str:
    body = raw.rstrip(b"\n")
    cut = body.rfind(b"\n") + 1
    try:
        manifest = json.loads(raw)
        expected = str(manifest["Manifest-Checksum"])
        listed = manifest["Files"]
    except (ValueError, KeyError, TypeError):
        raise OperationFailed("backup_manifest is not valid JSON") from None
    if hashlib.sha256(raw[:cut]).hexdigest() != expected:
        raise OperationFailed("backup_manifest does not match its own checksum")
    checked = 0
    for entry in listed:
        path = str(entry.get("Path", ""))
        if path not in files:
            raise OperationFailed(f"{path} is in backup_manifest but not in the tar")
        size, sha = files.pop(path)
        if size != int(entry.get("Size", -1)):
            raise OperationFailed(f"{path} has {size} bytes, backup_manifest says {entry['Size']}")
        if entry.get("Checksum-Algorithm") == "SHA256" and entry.get("Checksum") != sha:
            raise OperationFailed(f"{path} does not match its checksum in backup_manifest")
        checked += 1
    if files:
        raise OperationFailed(f"{sorted(files)[0]} is in the tar but not in backup_manifest")
    return f"tar intact, {checked} files match backup_manifest"
