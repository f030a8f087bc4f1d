"""Error types of the grammar. The project's root `NasError` lives in `kernels.errors` (the lowest layer that raises
user-facing errors); it is re-exported here, and nas/ and dashboard/ extend it."""

from __future__ import annotations

from kernels.errors import NasError


class UnknownNameError(NasError, KeyError):
    """A registry lookup for a name that does not exist; the message lists near matches and every known name."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class InvalidSpecError(NasError, ValueError):
    """An `ArchSpec` whose choices cannot build a working model; the message names the clashing choices."""


__all__ = ["InvalidSpecError", "NasError", "UnknownNameError"]
