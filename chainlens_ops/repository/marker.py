"""The repository marker, `chainlens-repo.toml`: flat TOML, read without a TOML parser
(it is on the `wal push` path, see chainlens_ops.record). Plaintext, and never a secret:

    format = 1 | 2                      2 once encrypted (older tools, which know only 1,
                                        refuse it rather than write plaintext into it)
    system_identifier = "7712..."       the cluster it serves ("0": not yet bound, after
    wal_segment_size = 16777216         `repo init` and before the first `wal push`)
    pg_version = 15
    created_at = "2026-...Z"
    created_by = "chainlens-ops 0.1.0"
    repository_id = "9f0c..."           random, per creation
    encryption = "aes-256-gcm"          encrypted repositories only, from here on
    key_source = "file" | "kms"
    kms_key_id = "arn:aws:kms:..."      with key_source = "kms"
    data_key = "<base64>"               the data key, wrapped by the key-encryption key
    key_rotated_at = "2026-...Z"        last `repo rotate-key` (or when encryption began)
    plain_objects = "yes"               objects from before `repo encrypt` may remain
                                        plaintext (until `repo encrypt --rewrite` ends)

The system identifier is kept as a string: it is an unsigned 64-bit number.
"""

from __future__ import annotations

from chainlens_ops.errors import OperationFailed
from chainlens_ops.record import record
from chainlens_ops.repository.layout import MARKER_KEY

FORMAT_PLAIN = 1
FORMAT_ENCRYPTED = 2
FORMAT = FORMAT_ENCRYPTED  # the highest this tool reads and writes
AES_256_GCM = "aes-256-gcm"


@record
class RepoMarker:
    format: int
    system_identifier: int
    wal_segment_size: int
    pg_version: int
    created_at: str
    created_by: str
    repository_id: str = ""  # random, per repository creation (older markers: none)
    encryption: str = ""  # AES_256_GCM, or "" for a plain repository
    key_source: str = ""  # crypto.FILE or crypto.KMS
    kms_key_id: str = ""
    data_key: str = ""  # wrapped (base64)
    key_rotated_at: str = ""
    plain_objects: bool = False

    @property
    def identity(self) -> str:
        """Tells this repository apart from one deleted and recreated at the same URL
        (look-ahead records are tied to it)."""
        return f"{self.system_identifier}:{self.repository_id or self.created_at}"

    @property
    def bound(self) -> bool:
        """Whether a cluster has written to it (a `repo init` marker is not, yet)."""
        return self.system_identifier != 0

    @property
    def encrypted(self) -> bool:
        return bool(self.encryption)

    def to_bytes(self) -> bytes:
        lines = [
            "# chainlens-ops repository: one PostgreSQL cluster's WAL, backups, restore points",
            f"format = {self.format}",
            f'system_identifier = "{self.system_identifier}"',
            f"wal_segment_size = {self.wal_segment_size}",
            f"pg_version = {self.pg_version}",
            f'created_at = "{self.created_at}"',
            f'created_by = "{self.created_by}"',
        ]
        if self.repository_id:
            lines.append(f'repository_id = "{self.repository_id}"')
        if self.encryption:
            lines.append(f'encryption = "{self.encryption}"')
            lines.append(f'key_source = "{self.key_source}"')
            if self.kms_key_id:
                lines.append(f'kms_key_id = "{self.kms_key_id}"')
            lines.append(f'data_key = "{self.data_key}"')
            lines.append(f'key_rotated_at = "{self.key_rotated_at}"')
            if self.plain_objects:
                lines.append('plain_objects = "yes"')
        return ("\n".join(lines) + "\n").encode()


def parse_marker(raw: bytes, url: str) -> RepoMarker:
    fields: dict[str, str] = {}
    try:
        for line in raw.decode("utf-8").splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                key, sep, value = line.partition("=")
                if not sep:
                    raise ValueError(line)
                fields[key.strip()] = value.strip().strip('"')
        marker = RepoMarker(
            format=int(fields["format"]),
            system_identifier=int(fields["system_identifier"]),
            wal_segment_size=int(fields["wal_segment_size"]),
            pg_version=int(fields.get("pg_version", 0)),
            created_at=fields.get("created_at", ""),
            created_by=fields.get("created_by", ""),
            repository_id=fields.get("repository_id", ""),
            encryption=fields.get("encryption", ""),
            key_source=fields.get("key_source", ""),
            kms_key_id=fields.get("kms_key_id", ""),
            data_key=fields.get("data_key", ""),
            key_rotated_at=fields.get("key_rotated_at", ""),
            plain_objects=fields.get("plain_objects", "") == "yes",
        )
    except (ValueError, KeyError, UnicodeDecodeError):
        raise OperationFailed(
            f"repository {url}: {MARKER_KEY} is damaged or not a chainlens-ops marker"
        ) from None
    if marker.format > FORMAT:
        raise OperationFailed(
            f"repository {url} has format {marker.format}; this chainlens-ops understands "
            f"up to {FORMAT}",
            hint="upgrade chainlens-ops",
        )
    if marker.encryption and (marker.encryption != AES_256_GCM or marker.format < 2):
        raise OperationFailed(
            f"repository {url}: unknown encryption {marker.encryption!r} in {MARKER_KEY}"
        )
    return marker
