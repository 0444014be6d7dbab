"""`@record`: small immutable value classes, for modules on the `wal push`/`fetch` path.

Why not `dataclasses`: importing it costs ~14 ms (it pulls in `inspect` and `re`), and
`typing` another ~13 ms, while PostgreSQL starts one `wal push` process per 16 MB
segment and pgBackRest archives one in ~30 ms. A record behaves like a frozen
dataclass with plain fields: keyword or positional construction in annotation order,
defaults (immutable values only), `==`, `hash`, `repr` and `as_dict()` (both leave out
the fields listed in `_hidden_`, so a JSON dump of a record never shows a secret), and
`replace()`, which copies every field, hidden ones included. Type checkers see it as a
dataclass (PEP 681).
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, TypeVar, dataclass_transform

    _T = TypeVar("_T")
else:

    def dataclass_transform(**_kwargs):  # runtime stand-in, typing-free
        return lambda decorated: decorated


_MISSING = object()


@dataclass_transform(frozen_default=True)
def record(cls: type[_T]) -> type[_T]:
    # Not inspect.get_annotations: importing inspect is what makes dataclasses slow.
    fields: tuple[str, ...] = tuple(cls.__dict__.get("__annotations__", {}))  # noqa: RUF063
    defaults = {name: cls.__dict__[name] for name in fields if name in cls.__dict__}
    hidden = frozenset(getattr(cls, "_hidden_", ()))
    qualname = cls.__qualname__

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        if len(args) > len(fields):
            raise TypeError(f"{qualname}() takes {len(fields)} positional arguments")
        values = dict(zip(fields, args, strict=False))
        for name, value in kwargs.items():
            if name not in fields or name in values:
                raise TypeError(f"{qualname}() got an unexpected or repeated argument {name!r}")
            values[name] = value
        for name in fields:
            value = values.get(name, defaults.get(name, _MISSING))
            if value is _MISSING:
                raise TypeError(f"{qualname}() missing argument {name!r}")
            object.__setattr__(self, name, value)

    def __setattr__(self: Any, name: str, value: Any) -> None:
        raise AttributeError(f"{qualname} is immutable: cannot set {name!r}")

    def astuple(self: Any) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in fields)

    def __eq__(self: Any, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return bool(astuple(self) == astuple(other))

    def __hash__(self: Any) -> int:
        return hash(astuple(self))

    def __repr__(self: Any) -> str:
        shown = ", ".join(f"{n}={getattr(self, n)!r}" for n in fields if n not in hidden)
        return f"{qualname}({shown})"

    def as_dict(self: Any) -> dict[str, Any]:
        return {name: getattr(self, name) for name in fields if name not in hidden}

    methods: dict[str, Callable[..., Any]] = {
        "__init__": __init__,
        "__setattr__": __setattr__,
        "__eq__": __eq__,
        "__hash__": __hash__,
        "__repr__": __repr__,
        "as_dict": as_dict,
    }
    for name, method in methods.items():
        method.__qualname__ = f"{qualname}.{name}"
        setattr(cls, name, method)
    cls.__record_fields__ = fields  # type: ignore[attr-defined]
    return cls


def replace(obj: _T, **changes: Any) -> _T:
    """A copy of record `obj` with some fields changed (like dataclasses.replace)."""
    fields = getattr(type(obj), "__record_fields__", None)
    if fields is None:
        raise TypeError(f"replace() takes a @record, not {type(obj).__qualname__}")
    values = {name: getattr(obj, name) for name in fields}
    unknown = set(changes) - set(values)
    if unknown:
        raise TypeError(f"{type(obj).__qualname__} has no fields {sorted(unknown)}")
    values.update(changes)
    return type(obj)(**values)


def as_dict(obj: object) -> dict[str, Any] | None:
    """The shown fields of a record (`_hidden_` left out), or None for anything else
    (for JSON output)."""
    if getattr(type(obj), "__record_fields__", None) is None:
        return None
    return obj.as_dict()  # type: ignore[attr-defined, no-any-return]
