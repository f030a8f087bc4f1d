"""Real images from disk for the `image_folder` data set: CIFAR-10's python batches and folders of class
sub-folders (ImageNet layout). Nothing is downloaded.

CIFAR-10 ships as pickles, and unpickling runs whatever callables a file names. `cifar_batch` reads them with an
unpickler that resolves only numpy's array and scalar rebuilders (and latin-1 bytes), so a crafted file is refused
with an error naming what it asked for, before anything in it runs; the result must then look like a batch
(b"data" uint8 N × 3072, b"labels" N integers in 0..9).
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .errors import NasError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".ppm", ".tif", ".tiff"}


class _Refused(pickle.UnpicklingError):
    """A global that a CIFAR batch never names."""


def _latin1(text: str, encoding: str = "latin1") -> bytes:
    """What protocol-2 pickles call to rebuild bytes (`_codecs.encode(text, "latin1")`); no other codec."""
    if encoding.replace("-", "").replace("_", "").lower() not in ("latin1", "iso88591"):
        raise _Refused(f"_codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


def _cifar_globals() -> dict[tuple[str, str], Any]:
    """The only callables a CIFAR-10 batch needs: numpy's array and scalar rebuilders, in numpy 1 and 2 spelling."""
    import numpy as np

    core = getattr(np, "_core", None) or np.core
    allowed = {"_reconstruct": core.multiarray._reconstruct, "scalar": core.multiarray.scalar,
               "_frombuffer": core.numeric._frombuffer}
    out: dict[tuple[str, str], Any] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
                                       ("_codecs", "encode"): _latin1}
    for prefix in ("numpy.core", "numpy._core"):
        out.update({(f"{prefix}.{mod}", name): fn for (mod, name), fn in zip(
            (("multiarray", "_reconstruct"), ("multiarray", "scalar"), ("numeric", "_frombuffer")), allowed.values())})
    return out


class _CifarUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists, bytes, str, numbers and numpy arrays; any other global (a function or class that a
    crafted file could use to run code) is refused before it is looked up."""

    def __init__(self, file: Any) -> None:
        super().__init__(file, encoding="bytes")
        self._allowed = _cifar_globals()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise _Refused(f"{module}.{name}") from None


def cifar_batch(p: Path) -> tuple[Tensor, Tensor]:
    """One CIFAR-10 python batch: {b"data": uint8 (N, 3072), b"labels": N ints in 0..9}, read without running code."""
    import numpy as np

    try:
        with p.open("rb") as f:
            d = _CifarUnpickler(f).load()
    except _Refused as e:
        raise NasError(f"image_folder: {p} is not a CIFAR-10 python batch: it asks to load {e}, which a CIFAR batch "
                       "never holds, so it was not unpickled (only dicts, lists, bytes, str, numbers and numpy arrays "
                       "are read)") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as e:
        raise NasError(f"image_folder: {p} is not a readable CIFAR-10 python batch ({type(e).__name__}: {e})") from None
    data = d.get(b"data") if isinstance(d, dict) else None
    labels = d.get(b"labels") if isinstance(d, dict) else None
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2 and data.shape[1] == 3072
            and isinstance(labels, list) and len(labels) == len(data)
            and all(isinstance(v, (int, np.integer)) and 0 <= v < 10 for v in labels)):
        raise NasError(f"image_folder: {p} is not a CIFAR-10 python batch: expected a dict with b'data' (uint8, N × "
                       "3072) and b'labels' (N integers in 0..9)")
    x = torch.as_tensor(data).view(-1, 3, 32, 32).float() / 255.0
    return x, torch.as_tensor([int(v) for v in labels], dtype=torch.long)


def load_cifar(root: Path) -> tuple[Tensor, Tensor, Tensor, Tensor, int]:
    parts = [cifar_batch(p) for p in sorted(root.glob("data_batch_*"))]
    if not parts:
        raise NasError(f"image_folder: {root} has test_batch but no data_batch_* files (CIFAR-10 python layout)")
    x_te, y_te = cifar_batch(root / "test_batch")
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]), x_te, y_te, 10


def load_class_folders(root: Path, img_size: int) -> tuple[Tensor, Tensor, list[str]]:
    try:
        from PIL import Image
    except ImportError as e:
        raise NasError(f"image_folder: reading images from {root} needs Pillow, which is not installed "
                       "(pip install pillow); CIFAR-10 pickle folders need nothing extra") from e
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    xs, ys = [], []
    for k, cls in enumerate(classes):
        for f in sorted((root / cls).rglob("*")):
            if f.suffix.lower() in IMAGE_SUFFIXES:
                with Image.open(f) as im:
                    im = im.convert("RGB").resize((img_size, img_size), Image.BILINEAR)
                    xs.append(torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8).view(img_size, img_size, 3))
                ys.append(k)
    if not xs:
        raise NasError(f"image_folder: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in class sub-folders of {root}")
    return torch.stack(xs).permute(0, 3, 1, 2).float() / 255.0, torch.as_tensor(ys), classes


__all__ = ["IMAGE_SUFFIXES", "cifar_batch", "load_cifar", "load_class_folders"]
