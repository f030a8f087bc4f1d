"""The platform's error types. `NasError` (the root) and `InvalidSpecError` come from `blocks`, the lowest layer that
raises user-facing errors; the platform adds the ones only it can raise. Every message says what was wrong, the value,
what is allowed and what to do next."""

from __future__ import annotations

from blocks.errors import InvalidSpecError, NasError


class StudyConfigError(NasError, ValueError):
    """A study file (or a `--set` override) that cannot run: the message names the file, the key, the bad value and
    what is allowed. Raised before anything is trained or written."""

    def __init__(self, message: str, *, file: str | None = None, key: str | None = None) -> None:
        where = ", ".join(p for p in (f"file {file}" if file else "", f"key {key!r}" if key else "") if p)
        super().__init__(f"{where}: {message}" if where else message)
        self.file, self.key, self.detail = file, key, message


class StoreError(NasError):
    """The study database cannot be opened or written (bad URL, unreachable server, schema from another version).
    The message names the URL and says how to fix or resume."""


class TrialDiverged(NasError):
    """Training produced a NaN or infinite loss; the trial is recorded as failed with the epoch it diverged at."""

    def __init__(self, epoch: int, loss: float, step: int | None = None) -> None:
        at = f"epoch {epoch}" + (f", step {step}" if step is not None else "")
        super().__init__(f"training diverged at {at}: loss = {loss}; lower the learning rate, add warm-up, or check "
                         "the data for NaN/inf values")
        self.epoch, self.loss, self.step = epoch, loss, step


class BudgetError(StudyConfigError):
    """A parameter budget that the chosen knob (width or depth) cannot meet within the tolerance; the message names
    the budget, the closest count, the knob and its value, and suggests the other knob."""


__all__ = ["BudgetError", "InvalidSpecError", "NasError", "StoreError", "StudyConfigError", "TrialDiverged"]
