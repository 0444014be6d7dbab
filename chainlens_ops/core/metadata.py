"""Reading the repository's metadata: parsed JSON -> typed values, checked, in one place.

Every JSON record the tool keeps in a repository (backup manifests, verify and drill
proofs, restore-point catalog entries and their WAL scan cache) is read through
`Fields`: each value is fetched with the type the reader expects, and the first one
that is missing, of the wrong type or unreadable (a size stored as text, a garbled
time, a truncated file) raises `DamagedMetadata`, one line naming the object and the
field. Callers decide what a damaged record means for them (`backup list` shows the
backup as damaged, the restore planner passes it over, a scan-cache entry is rebuilt),
so a damaged record never becomes a traceback, and never hides the healthy ones.

The repository marker (flat TOML, `chainlens_ops.repository.marker`) is read into a dict and
checked by the same `Fields`. That is on the `wal push` hot path, so this module imports
neither `json` (only `load_json` needs it) nor `typing` at run time.

This layer is about parsed records only; how the bytes are stored (compressed,
encrypted) is the repository's business.
"""

from __future__ import annotations

from chainlens_ops.core.errors import ChainlensError, OperationFailed

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from typing import Any, TypeVar

    T = TypeVar("T")
MAX_RECORD = 16 * 1024 * 1024  # bytes read of one record; a bigger one is damaged anyway
_REQUIRED: Any = object()


class DamagedMetadata(OperationFailed):
    """A repository record that cannot be read as what it claims to be."""

    def __init__(self, where: str, why: str, *, hint: str | None = None) -> None:
        super().__init__(f"{where} is damaged: {why}", hint=hint)
        self.where = where
        self.why = why


def load_json(raw: bytes, where: str, *, known: Iterable[str] | None = None) -> Fields:
    """The top-level JSON object of `raw` (the record stored at `where`)."""
    import json

    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        truncated = raw.rstrip()[-1:] not in (b"}", b"]")
        raise DamagedMetadata(where, "truncated JSON" if truncated else "not JSON") from None
    return Fields(data, where, known=known)


class Fields:
    """Typed access to one JSON object. `known`: the fields a strict record may hold
    (`finish()` refuses any other); None for open records (only what is read counts)."""

    def __init__(
        self, data: object, where: str, *, known: Iterable[str] | None = None, path: str = ""
    ) -> None:
        if not isinstance(data, dict):
            what = f"field {path.rstrip('.')!r}" if path else "the record"
            raise DamagedMetadata(where, f"{what} is not a JSON object")
        self.data: dict[str, Any] = data
        self.where = where
        self.known = None if known is None else frozenset(known)
        self.path = path

    def _name(self, name: str) -> str:
        return f"{self.path}{name}"

    def damaged(self, name: str, why: str) -> DamagedMetadata:
        return DamagedMetadata(self.where, f"field {self._name(name)!r} {why}")

    def _get(self, name: str, default: Any) -> Any:
        if name in self.data:
            return self.data[name]
        if default is _REQUIRED:
            raise self.damaged(name, "is missing")
        return default

    def has(self, name: str) -> bool:
        return name in self.data

    def text(self, name: str, default: Any = _REQUIRED, *, empty: bool = False) -> str:
        value = self._get(name, default)
        if not isinstance(value, str) or (not value and not empty and default is _REQUIRED):
            raise self.damaged(name, f"should be a non-empty string, not {_shown(value)}")
        return value

    def opt_text(self, name: str) -> str | None:
        value = self._get(name, None)
        if value is not None and not isinstance(value, str):
            raise self.damaged(name, f"should be a string or null, not {_shown(value)}")
        return value

    def integer(self, name: str, default: Any = _REQUIRED, *, minimum: int = 0) -> int:
        value = self._get(name, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise self.damaged(name, f"should be an integer >= {minimum}, not {_shown(value)}")
        return value

    def opt_integer(self, name: str, *, minimum: int = 0) -> int | None:
        if self._get(name, None) is None:
            return None
        return self.integer(name, minimum=minimum)

    def number(self, name: str) -> float | None:
        value = self._get(name, None)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.damaged(name, f"should be a number, not {_shown(value)}")
        return float(value)

    def flag(self, name: str, default: Any = _REQUIRED) -> bool:
        value = self._get(name, default)
        if not isinstance(value, bool):
            raise self.damaged(name, f"should be true or false, not {_shown(value)}")
        return value

    def choice(self, name: str, allowed: Iterable[str], default: Any = _REQUIRED) -> str:
        value = self._get(name, default)
        options = tuple(allowed)
        if value not in options:
            raise self.damaged(name, f"should be one of {', '.join(options)}, not {_shown(value)}")
        return str(value)

    def parsed(self, name: str, parse: Callable[[str], object], what: str) -> str:
        """A required string that `parse` must accept (a time, an LSN, a WAL name)."""
        value = self.text(name)
        _check(self, name, value, parse, what)
        return value

    def opt_parsed(self, name: str, parse: Callable[[str], object], what: str) -> str | None:
        value = self.opt_text(name)
        if value is not None:
            _check(self, name, value, parse, what)
        return value

    def texts(self, name: str) -> list[str]:
        value = self._get(name, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.damaged(name, f"should be a list of strings, not {_shown(value)}")
        return list(value)

    def records(self, name: str, read: Callable[[Fields], T], known: Iterable[str]) -> list[T]:
        """A required list of objects, each read by `read` (strict: `known` fields)."""
        value = self._get(name, _REQUIRED)
        if not isinstance(value, list):
            raise self.damaged(name, f"should be a list, not {_shown(value)}")
        out = []
        for i, item in enumerate(value):
            sub = Fields(item, self.where, known=known, path=f"{self._name(name)}[{i}].")
            out.append(read(sub))
            sub.finish()
        return out

    def finish(self) -> None:
        """Refuse fields a strict record does not have (a newer or foreign writer)."""
        if self.known is None:
            return
        unknown = sorted(set(self.data) - self.known)
        if unknown:
            raise self.damaged(unknown[0], "is not a field of this record")


def _check(
    fields: Fields, name: str, value: str, parse: Callable[[str], object], what: str
) -> None:
    try:
        parse(value)
    except (ValueError, ChainlensError):
        raise fields.damaged(name, f"is not {what}: {_shown(value)}") from None


def _shown(value: object) -> str:
    if isinstance(value, str):
        text = repr(value)
        return text if len(text) <= 40 else text[:37] + "...'"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return f"the number {value}"
    return f"a JSON {'list' if isinstance(value, list) else 'object'}"
