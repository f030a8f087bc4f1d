"""Error types of the grammar. `NasError` is the project's root error; it lives here because `blocks` is the lowest
layer that raises user-facing errors (nas/ and dashboard/ re-export and extend it)."""

from __future__ import annotations


class NasError(Exception):
    """Root of every error the project raises on purpose (bad input, unavailable path, store fault)."""


class UnknownNameError(NasError, KeyError):
    """A registry lookup for a name that does not exist; the message lists near matches and every known name."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class InvalidSpecError(NasError, ValueError):
    """An `ArchSpec` whose choices cannot build a working model; the message names the clashing choices."""
