"""What every command's result says about itself, so the CLI and the daemon decide
success and the exit code the same way (a result, not its caller, knows what it means)."""

from __future__ import annotations

from typing import Protocol, runtime_checkable


@runtime_checkable
class Outcome(Protocol):
    @property
    def ok(self) -> bool: ...

    @property
    def exit_code(self) -> int: ...
