"""`nas export`'s core: a trial's model file re-written where the user wants it, with the study's provenance added.

Why re-write instead of copying bytes: the exported file must say where it came from (study, trial, metrics) in its
own header, and going through `read_model_file` checks the source (no pickle, spec valid, tensors match) before
anything is written. The write is atomic, so an interrupted export never leaves a half file under the final name.
"""

from __future__ import annotations

import os
from pathlib import Path

from blocks.model_file import read_model_file, write_model_file


def export_metadata(study: str, trial: int, metrics: dict[str, float] | None = None) -> dict[str, str]:
    """The provenance keys an export adds: `study`, `trial`, and `metric.<name>` per metric (header values are
    strings; floats are written with `repr`, so they read back exactly)."""
    meta = {"study": study, "trial": str(trial)}
    meta.update({f"metric.{k}": repr(float(v)) for k, v in (metrics or {}).items()})
    return meta


def export_model_file(source: str | os.PathLike[str], out: str | os.PathLike[str],
                      extra_metadata: dict[str, str] | None = None, *, pair: bool = False) -> Path:
    """Write `source`'s model to `out` with `extra_metadata` added (it wins over keys already in the file).

    With `pair=True`, or when `out` ends in ".json", the spec JSON is also written beside the weights:
    `model.safetensors` + `model.json` (for tools that read the architecture without opening the weights). Returns
    the weights' path. The source may be `out` itself (metadata updated in place)."""
    mf = read_model_file(source)
    out = Path(out)
    weights = out.with_suffix(".safetensors") if out.suffix == ".json" else out
    tmp = weights.with_name(weights.name + ".partial")
    try:
        write_model_file(mf.spec, mf.state_dict, tmp, {**mf.metadata, **(extra_metadata or {})})
        os.replace(tmp, weights)
    finally:
        tmp.unlink(missing_ok=True)
    if pair or out.suffix == ".json":
        weights.with_suffix(".json").write_text(mf.spec.to_json(indent=2) + "\n")
    return weights


__all__ = ["export_metadata", "export_model_file"]
