"""What every command's result says about itself, so the CLI and the daemon decide
success and the exit code the same way (a result, not its caller, knows what it means).

`PerTarget` is how every command that acts on several databases (`--db all`) gathers
failures: each target's error is kept (one line, its exit code) and the others still
run; with one target the error is raised as it is, as any single command's would be.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar, runtime_checkable

from chainlens_ops.core.errors import EXIT_FAILED, EXIT_OK, ChainlensError


@runtime_checkable
class Outcome(Protocol):
    @property
    def ok(self) -> bool: ...

    @property
    def exit_code(self) -> int: ...


def worst_exit(codes: Iterable[int]) -> int:
    """The exit code of several outcomes: the highest (3 unreachable beats 1 failed)."""
    return max(codes, default=EXIT_OK)


def failed_exit(ok: bool) -> int:
    """A result that is either fine or failed: 0 or 1."""
    return EXIT_OK if ok else EXIT_FAILED


@dataclass(frozen=True)
class TargetFailure:
    target: str  # the database (or table) that failed
    message: str  # ChainlensError.one_line()
    exit_code: int

    @property
    def line(self) -> str:
        return f"{self.target}: {self.message}"


_R = TypeVar("_R")


@dataclass
class PerTarget(Generic[_R]):
    """The results of one command over its targets, and the targets that failed."""

    alone: bool = False  # one target: its error is raised, not gathered
    results: list[_R] = field(default_factory=list)
    failures: list[TargetFailure] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.exit_code == EXIT_OK

    @property
    def exit_code(self) -> int:
        own = [r.exit_code for r in self.results if isinstance(r, Outcome)]
        return worst_exit([*own, *(f.exit_code for f in self.failures)])

    @contextmanager
    def attempt(self, target: str) -> Iterator[None]:
        """Run one target's work; a ChainlensError becomes a failure of `target`."""
        try:
            yield
        except ChainlensError as exc:
            if self.alone:
                raise
            self.failures.append(TargetFailure(target, exc.one_line(), exc.exit_code))
