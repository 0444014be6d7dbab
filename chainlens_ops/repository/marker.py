"""The repository marker, `chainlens-repo.toml`: flat TOML, read without a TOML parser
(it is on the `wal push` path, see chainlens_ops.core.record). Plaintext, and never a secret:

    format = 1 | 2 | 3                  1 plain; 3 encrypted (2: encrypted by releases
                                        before the marker was authenticated, still read).
                                        Older tools refuse a format they do not know
                                        rather than write plaintext into it
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
    tag = "<base64>"                    format 3: authenticates every field above

The system identifier is kept as a string: it is an unsigned 64-bit number.

Authentication (format 3). The marker is plaintext, so whoever can write the bucket
could swap its wrapped key, KMS key or settings (`plain_objects = "yes"` would let
planted plaintext objects through). Its `tag` is an AES-256-GCM tag, under the data key,
over the marker's fields as `to_bytes` writes them without the tag, with
MARKER_AAD as their prefix (no object's associated data starts so) and a fresh nonce:
`nonce (12) | tag (16)`, base64 (crypto.py makes and checks it). The tag is checked as
soon as the data key is
unwrapped, before any object is sealed or opened. The wrapped data key is bound to the
format in turn (crypto.py), so turning a format-3 marker back into an untagged format-2
one makes the key unwrap fail rather than the tag go unchecked. A plain repository's
marker holds no secret to key a tag with and stays as it was. What the tag cannot stop:
a marker rewritten whole around a data key of the writer's own, wrapped by a KMS key
they control, opens wherever this server's AWS credentials may use that KMS key (IAM
decides; a key file cannot be forged that way), and a marker rewritten as plain.
"""

from __future__ import annotations

from chainlens_ops.core.errors import EXIT_FAILED, ChainlensError, OperationFailed
from chainlens_ops.core.metadata import DamagedMetadata, Fields
from chainlens_ops.core.record import record, replace
from chainlens_ops.repository.layout import MARKER_KEY

FORMAT_PLAIN = 1
FORMAT_ENCRYPTED = 2  # encrypted, marker not authenticated (read, never written now)
FORMAT_AUTHENTICATED = 3  # encrypted, marker authenticated by its tag
FORMAT = FORMAT_AUTHENTICATED  # the highest this tool reads and writes
AES_256_GCM = "aes-256-gcm"
MARKER_AAD = b"chainlens-ops repository marker v1\n"


class MarkerTampered(ChainlensError):
    """An encrypted repository's marker fails authentication: changed by someone
    without its data key. Not an OperationFailed: no reader may take it for one damaged
    object and carry on (a catalog lists damaged manifests); the command stops (exit 1)."""

    exit_code = EXIT_FAILED


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
    tag: str = ""  # format 3: nonce and AES-GCM tag over the other fields (base64)

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

    @property
    def authenticated(self) -> bool:
        """Whether this marker carries a tag to check (encrypted, format 3)."""
        return self.encrypted and self.format >= FORMAT_AUTHENTICATED

    def signed_bytes(self) -> bytes:
        """What its tag authenticates: every field but the tag, as stored."""
        return MARKER_AAD + replace(self, tag="").to_bytes()

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
            if self.tag:
                lines.append(f'tag = "{self.tag}"')
        return ("\n".join(lines) + "\n").encode()


def parse_marker(raw: bytes, url: str) -> RepoMarker:
    """The marker, checked by the metadata layer (chainlens_ops.core.metadata): a damaged one
    raises DamagedMetadata, one line naming the field."""
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
    system_identifier = int(fields.parsed("system_identifier", int, "a number"))
    seg_size = fields.integer("wal_segment_size")
    unbound = system_identifier == 0 and seg_size == 0  # after `repo init`
    if not unbound and (seg_size & (seg_size - 1) or not 1 << 20 <= seg_size <= 1 << 30):
        raise fields.damaged("wal_segment_size", "is not a power of two from 1 MB to 1 GB")
    encryption = fields.choice("encryption", ("", AES_256_GCM), "")
    if encryption and version < FORMAT_ENCRYPTED:
        raise fields.damaged("encryption", f"needs format {FORMAT_ENCRYPTED}, not {version}")
    tag = fields.text("tag", "")
    if encryption and version >= FORMAT_AUTHENTICATED and not tag:
        raise fields.damaged("tag", "is missing (an encrypted marker is authenticated)")
    return RepoMarker(
        format=version,
        system_identifier=system_identifier,
        wal_segment_size=seg_size,
        pg_version=fields.integer("pg_version", 0),
        created_at=fields.text("created_at", ""),
        created_by=fields.text("created_by", ""),
        repository_id=fields.text("repository_id", ""),
        encryption=encryption,
        key_source=fields.choice("key_source", ("", "file", "kms"), ""),
        kms_key_id=fields.text("kms_key_id", ""),
        data_key=fields.text("data_key", ""),
        key_rotated_at=fields.text("key_rotated_at", ""),
        plain_objects=fields.choice("plain_objects", ("", "yes", "no"), "") == "yes",
        tag=tag if encryption else "",
    )


def _toml_int(value: str) -> object:
    try:
        return int(value)
    except ValueError:
        return value
