"""Test-session setup. Without a GPU, Triton kernels run under Triton's interpreter: the variable must be set before
any module that defines a @triton.jit kernel is imported, whichever test file pytest collects first."""

from __future__ import annotations

import os
import shutil

if not shutil.which("nvidia-smi"):
    os.environ.setdefault("TRITON_INTERPRET", "1")
