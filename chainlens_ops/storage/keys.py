"""Key rules shared by every backend, so a key valid on one is valid on all.

A key is a relative '/'-separated path: no leading or trailing '/', no empty part, and
no part that starts with '.'. The last rule excludes '.' and '..' (no escaping the
repository on disk) and reserves dot-names for the local backend's temp files, which
therefore can never collide with an object or show up in `list`.
"""

from __future__ import annotations

from chainlens_ops.storage.base import InvalidKey

MAX_KEY_LENGTH = 1024  # S3's limit, in UTF-8 bytes


def check_key(key: str) -> str:
    """`key` itself if it is valid; InvalidKey (a ValueError too) otherwise."""
    if not isinstance(key, str) or not key:
        raise InvalidKey(f"invalid repository key {key!r}: empty")
    if len(key.encode("utf-8", "surrogatepass")) > MAX_KEY_LENGTH:
        raise InvalidKey(f"invalid repository key {key[:60]!r}...: longer than 1024 bytes")
    for part in key.split("/"):
        _check_part(key, part)
    return key


def check_prefix(prefix: str) -> str:
    """A `list` prefix: '' or a key's beginning (it may end with '/' or inside a name)."""
    if not isinstance(prefix, str):
        raise InvalidKey(f"invalid repository prefix {prefix!r}")
    if prefix:
        parts = prefix.split("/")
        for part in parts[:-1]:
            _check_part(prefix, part)
        if parts[-1]:
            _check_part(prefix, parts[-1])
    return prefix


def _check_part(key: str, part: str) -> None:
    if not part:
        raise InvalidKey(f"invalid repository key {key!r}: empty path part or leading '/'")
    if part.startswith("."):
        raise InvalidKey(f"invalid repository key {key!r}: a part may not start with '.'")
    if "\x00" in part or "\\" in part or any(ord(c) < 32 for c in part):
        raise InvalidKey(f"invalid repository key {key!r}: control character or backslash")
