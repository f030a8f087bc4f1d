"""The model file: one safetensors file holding a backbone's weights and, in its header, the `ArchSpec` that builds it.

Why safetensors and not `torch.save`: a pickle runs code when it is loaded, so a model file shared between machines or
people must be plain data. Loading never unpickles anything: the header's spec is validated like any other spec, the
model is rebuilt with `build_backbone`, and the tensors must match it key for key and shape for shape.

Header metadata (all strings): `format` ("visionseq-nas/1"), `arch_spec` (the spec's JSON), `spec_id`, optional
`tied` (JSON {dropped name: kept name} for tensors that share memory and are stored once), plus the caller's keys.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from .backbone import Backbone, build_backbone
from .errors import InvalidSpecError, NasError
from .spec import ArchSpec

FORMAT = "visionseq-nas/1"
RESERVED_KEYS = ("format", "arch_spec", "spec_id", "tied")
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*")  # a dotted parameter path; nothing a filesystem would interpret
_MAX_LISTED = 5


class ModelFileError(NasError, ValueError):
    """A model file that cannot be written or loaded; the message names the path and what is wrong."""


@dataclass(frozen=True)
class ModelFile:
    """What a model file holds: the validated spec, every tensor (tied ones restored under each name), and the
    caller's metadata (the reserved keys are exposed as `spec`, not repeated here)."""

    spec: ArchSpec
    state_dict: dict[str, Tensor]
    metadata: dict[str, str] = field(default_factory=dict)


# ---- writing ------------------------------------------------------------------------------------------------------
def save_backbone(model: nn.Module, spec: ArchSpec, path: str | os.PathLike[str],
                  metadata: dict[str, str] | None = None) -> Path:
    """Write `model`'s state dict and `spec` as one safetensors model file; returns the path written."""
    return write_model_file(spec, model.state_dict(), path, metadata)


def write_model_file(spec: ArchSpec, state_dict: dict[str, Tensor], path: str | os.PathLike[str],
                     metadata: dict[str, str] | None = None) -> Path:
    """The same as `save_backbone` from a state dict (export re-writes a file this way with more metadata)."""
    path = Path(path)
    user = dict(metadata or {})
    bad = [k for k, v in user.items() if not isinstance(k, str) or not isinstance(v, str)]
    if bad:
        raise ModelFileError(f"{path}: metadata must map str to str; not so for key(s) {bad[:_MAX_LISTED]}")
    clash = sorted(set(user) & set(RESERVED_KEYS))
    if clash:
        raise ModelFileError(f"{path}: metadata keys {clash} are reserved for the format ({', '.join(RESERVED_KEYS)})")
    _check_names(path, state_dict)
    _check_matches(path, spec, state_dict)
    tensors, tied = _dedup(state_dict)
    header = {"format": FORMAT, "arch_spec": spec.to_json(), "spec_id": spec.id, **user}
    if tied:
        header["tied"] = json.dumps(tied, sort_keys=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=header)
    return path


def _dedup(state_dict: dict[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Contiguous CPU tensors safetensors accepts: an exact alias (same memory, shape, stride) is stored once and
    named in `tied`; a tensor that only overlaps another's memory is copied (safetensors refuses shared storage)."""
    tensors: dict[str, Tensor] = {}
    tied: dict[str, str] = {}
    views: dict[tuple, str] = {}
    storages: set[tuple] = set()
    for name, t in state_dict.items():
        t = t.detach()
        view = (t.device, t.data_ptr(), t.dtype, tuple(t.shape), t.stride())
        if t.numel() and view in views:
            tied[name] = views[view]
            continue
        views[view] = name
        storage = (t.device, t.untyped_storage().data_ptr())
        shared = storage in storages
        storages.add(storage)
        t = t.to("cpu")
        tensors[name] = t.clone(memory_format=torch.contiguous_format) if shared else t.contiguous()
    return tensors, tied


# ---- reading ------------------------------------------------------------------------------------------------------
def read_model_file(path: str | os.PathLike[str]) -> ModelFile:
    """Read and check a model file without unpickling: magic bytes, format, spec, tensor names, keys and shapes."""
    path = Path(path)
    _check_magic(path)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            header = f.metadata() or {}
            names = list(f.keys())
            _check_names(path, names)
            tensors = {k: f.get_tensor(k) for k in names}
    except SafetensorError as e:
        raise ModelFileError(f"{path}: not a readable safetensors file ({e})") from None
    if header.get("format") != FORMAT:
        raise ModelFileError(f"{path}: a safetensors file without visionseq-nas metadata (format="
                             f"{header.get('format')!r}, expected {FORMAT!r}); it holds weights but no ArchSpec, so "
                             "it cannot be rebuilt: write it with blocks.save_backbone or `nas export`")
    spec = _read_spec(path, header)
    state = _restore_tied(path, tensors, header.get("tied"))
    _check_matches(path, spec, state)
    user = {k: v for k, v in header.items() if k not in RESERVED_KEYS}
    return ModelFile(spec, state, user)


def load_backbone(path: str | os.PathLike[str], device: torch.device | str = "cpu",
                  kernel_backend: str = "auto") -> Backbone:
    """Rebuild the backbone a model file describes and load its weights (strict); returned in eval mode, as a
    loaded model is usually for inference (call `.train()` to fine-tune)."""
    mf = read_model_file(path)
    model = build_backbone(mf.spec, kernel_backend=kernel_backend, device=device)
    model.load_state_dict(mf.state_dict, strict=True)
    return model.eval()


def _check_magic(path: Path) -> None:
    """Recognise the file by its first bytes. A safetensors file is an 8-byte little-endian header length, then a JSON
    header that fits in the file; that rules out a pickle whose first byte (0x80) could also start a length."""
    if not path.is_file():
        raise ModelFileError(f"{path}: no such model file" if not path.exists() else f"{path}: not a regular file")
    with path.open("rb") as f:
        head = f.read(9)
    n = int.from_bytes(head[:8], "little") if len(head) == 9 else -1
    if head[8:9] == b"{" and 0 < n <= path.stat().st_size - 8:
        return
    if head.startswith(b"PK\x03\x04") or head.startswith(b"\x80"):
        kind = "a torch.save zip archive" if head.startswith(b"PK") else "a pickle"
        raise ModelFileError(f"{path}: is {kind}; pickle files are never loaded (they run code); export with "
                             "`nas export` or blocks.save_backbone to get a safetensors model file")
    raise ModelFileError(f"{path}: not a safetensors file (no 8-byte header length followed by a JSON header)")


def _check_names(path: Path, names: Iterable[str]) -> None:
    bad = [n for n in names if not isinstance(n, str) or not _NAME.fullmatch(n) or ".." in n]
    if bad:
        raise ModelFileError(f"{path}: tensor name(s) {bad[:_MAX_LISTED]!r} are not dotted parameter paths "
                             "(path traversal, a leading '/', NUL or other odd characters); refusing the file")


def _read_spec(path: Path, header: dict[str, str]) -> ArchSpec:
    try:
        spec = ArchSpec.from_json(header.get("arch_spec", ""))
    except (InvalidSpecError, json.JSONDecodeError, KeyError) as e:
        raise ModelFileError(f"{path}: the arch_spec in its header does not validate: {e}") from None
    if header.get("spec_id") != spec.id:
        raise ModelFileError(f"{path}: spec_id {header.get('spec_id')!r} in the header is not the id of its "
                             f"arch_spec ({spec.id}); the header was edited or written by another grammar version")
    return spec


def _restore_tied(path: Path, tensors: dict[str, Tensor], tied_json: str | None) -> dict[str, Tensor]:
    if not tied_json:
        return tensors
    try:
        tied = json.loads(tied_json)
        ok = isinstance(tied, dict) and all(isinstance(v, str) and v in tensors for v in tied.values())
    except json.JSONDecodeError:
        ok = False
    if not ok:
        raise ModelFileError(f"{path}: header 'tied' must be JSON {{name: stored tensor name}}, "
                             f"got {tied_json[:200]!r}")
    _check_names(path, tied)
    return {**tensors, **{alias: tensors[kept] for alias, kept in tied.items()}}


def _check_matches(path: Path, spec: ArchSpec, state: dict[str, Tensor]) -> None:
    """Compare with the spec's model built on the meta device, so a mismatch is named before anything is allocated
    (on write as well as on read: a file that could never load is refused when it is made)."""
    want = {k: tuple(v.shape) for k, v in Backbone(spec, device="meta").state_dict().items()}
    groups = {
        "missing": [k for k in want if k not in state],
        "unexpected": [k for k in state if k not in want],
        "wrong shape": [f"{k} {tuple(state[k].shape)} in file, {want[k]} in spec" for k in want
                        if k in state and tuple(state[k].shape) != want[k]],
    }
    parts = [f"{kind} {', '.join(ks[:_MAX_LISTED])}" + (f" (+{len(ks) - _MAX_LISTED} more)" if len(ks) > _MAX_LISTED
                                                         else "") for kind, ks in groups.items() if ks]
    if parts:
        raise ModelFileError(f"{path}: tensors do not match spec {spec.id}: {'; '.join(parts)}")


__all__ = ["FORMAT", "ModelFile", "ModelFileError", "load_backbone", "read_model_file", "save_backbone",
           "write_model_file"]
