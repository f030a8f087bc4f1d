"""Errors raised by the kernel layer."""

from __future__ import annotations


class KernelUnavailableError(RuntimeError):
    """A requested fast path cannot run here (missing package, no CUDA device, unsupported dtype or shape).

    Raised instead of silently falling back, so the caller (dispatch) can pick the reference path explicitly and
    record which one ran. The message should name the path, the reason, and what to do (install, or use ``"ref"``).
    """

    def __init__(self, path: str, reason: str, hint: str = "use the pure-PyTorch reference path ('ref')") -> None:
        self.path, self.reason, self.hint = path, reason, hint
        super().__init__(f"kernel path {path!r} is unavailable: {reason}; {hint}")
