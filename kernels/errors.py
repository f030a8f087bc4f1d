"""The project's error root and the kernel layer's own error.

`NasError` lives here because `kernels/` is the lowest layer that raises user-facing errors and must not import
`blocks/`; `blocks.errors` and `nas.errors` re-export it and add their own subclasses, so one `except NasError`
catches every error the project raises on purpose. Importing this module costs nothing (no torch).
"""

from __future__ import annotations


class NasError(Exception):
    """Root of every error the project raises on purpose (bad input, unavailable path, store fault)."""


class KernelUnavailableError(NasError, RuntimeError):
    """A requested fast path cannot run here (missing package, no CUDA device, unsupported dtype or shape).

    Raised instead of silently falling back, so the caller picks a path explicitly and the run records which one
    ran. The message names the path, the reason and what to do (install, or use backend="reference").
    """

    def __init__(self, path: str, reason: str,
                 hint: str = "use the pure-PyTorch reference path (backend='reference')") -> None:
        self.path, self.reason, self.hint = path, reason, hint
        super().__init__(f"kernel path {path!r} is unavailable: {reason}; {hint}")


__all__ = ["KernelUnavailableError", "NasError"]
