"""Data sets for trials, generated or loaded deterministically per seed, directly on the trial's device. Nothing is
ever downloaded.

    make_dataset("shapes", seed=0, n_train=512, n_test=256, img_size=32, position="uniform", clutter=0.3)

| name           | what it tests                                                | knobs                          |
|----------------|--------------------------------------------------------------|--------------------------------|
| `shapes`       | procedural shapes (square, circle, ring, ...), position bias | num_classes, position, clutter, object_scale |
| `pathfinder`   | are two marked points joined by a drawn curve (long range)   | distractors                    |
| `digits`       | scikit-learn's 8×8 handwritten digits, resized               | (none)                         |
| `image_folder` | a local folder of class sub-folders, or CIFAR-10's pickles   | path                           |

Images are (N, 3, S, S) float32, standardised per channel with the training split's statistics; labels are int64.
The same seed on the same device gives the same tensors (CPU and CUDA random streams differ from each other).
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from .errors import NasError
from .images import load_cifar, load_class_folders


@dataclass(frozen=True)
class Dataset:
    name: str
    x_train: Tensor  # (N_train, 3, S, S) float32, standardised
    y_train: Tensor  # (N_train,) int64
    x_test: Tensor
    y_test: Tensor
    num_classes: int
    img_size: int
    knobs: dict[str, Any] = field(default_factory=dict)

    @property
    def device(self) -> torch.device:
        return self.x_train.device


# ---------------------------------------------------------------------------------------------------- helpers
def _rng(seed: int, device: torch.device) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(int(seed))


def _uniform(g: torch.Generator, shape: tuple[int, ...], lo: float, hi: float, device) -> Tensor:
    return lo + (hi - lo) * torch.rand(shape, generator=g, device=device)


def _balanced_labels(n: int, k: int, g: torch.Generator, device) -> Tensor:
    """Exactly balanced (up to n mod k) labels in a seeded order."""
    y = torch.arange(n, device=device) % k
    return y[torch.randperm(n, generator=g, device=device)]


def _standardise(x_train: Tensor, x_test: Tensor) -> tuple[Tensor, Tensor]:
    mean = x_train.mean(dim=(0, 2, 3), keepdim=True)
    std = x_train.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
    return (x_train - mean) / std, (x_test - mean) / std


def _grid(size: int, device) -> tuple[Tensor, Tensor]:
    c = torch.arange(size, device=device, dtype=torch.float32) + 0.5
    return c.view(1, size, 1), c.view(1, 1, size)  # yy (1, S, 1), xx (1, 1, S)


def _segment_distance(yy: Tensor, xx: Tensor, p0: Tensor, p1: Tensor) -> Tensor:
    """Distance of every pixel to the segment p0→p1; p0, p1 (N, 2) as (y, x) → (N, S, S)."""
    d = (p1 - p0)[:, :, None, None]
    rel_y, rel_x = yy - p0[:, 0, None, None], xx - p0[:, 1, None, None]
    t = ((rel_y * d[:, 0] + rel_x * d[:, 1]) / (d[:, 0] ** 2 + d[:, 1] ** 2).clamp_min(1e-6)).clamp(0, 1)
    return torch.hypot(rel_y - t * d[:, 0], rel_x - t * d[:, 1])


# ---------------------------------------------------------------------------------------------------- shapes
def _m_square(dy, dx, r): return torch.maximum(dy.abs(), dx.abs()) <= r
def _m_circle(dy, dx, r): return dy ** 2 + dx ** 2 <= r ** 2
def _m_ring(dy, dx, r): return (dy ** 2 + dx ** 2 <= r ** 2) & (dy ** 2 + dx ** 2 >= (0.55 * r) ** 2)
def _m_triangle(dy, dx, r): return (dy.abs() <= r) & (dx.abs() <= (dy + r) / 2)
def _m_cross(dy, dx, r): return ((dy.abs() <= r / 3) & (dx.abs() <= r)) | ((dx.abs() <= r / 3) & (dy.abs() <= r))
def _m_diamond(dy, dx, r): return dy.abs() + dx.abs() <= r
def _m_hbar(dy, dx, r): return (dy.abs() <= r / 3) & (dx.abs() <= r)
def _m_vbar(dy, dx, r): return (dx.abs() <= r / 3) & (dy.abs() <= r)
def _m_frame(dy, dx, r): return (torch.maximum(dy.abs(), dx.abs()) - 0.8 * r).abs() <= 0.2 * r
def _m_x(dy, dx, r):
    return (((dy - dx).abs() <= r / 3) | ((dy + dx).abs() <= r / 3)) & (torch.maximum(dy.abs(), dx.abs()) <= r)


SHAPES: dict[str, Callable[[Tensor, Tensor, Tensor], Tensor]] = {
    "square": _m_square, "circle": _m_circle, "triangle": _m_triangle, "cross": _m_cross, "ring": _m_ring,
    "diamond": _m_diamond, "hbar": _m_hbar, "vbar": _m_vbar, "frame": _m_frame, "x": _m_x,
}
POSITIONS = ("centred", "uniform")


def _render_shapes(y: Tensor, size: int, position: str, clutter: float, g: torch.Generator,
                   object_scale: float = 1.0) -> Tensor:
    n, dev = y.numel(), y.device
    yy, xx = _grid(size, dev)
    r = _uniform(g, (n,), 0.18 * size * object_scale, 0.3 * size * object_scale, dev)
    if position == "centred":
        centre = size / 2 + _uniform(g, (n, 2), -0.05 * size, 0.05 * size, dev)
    else:
        centre = r[:, None] + torch.rand((n, 2), generator=g, device=dev) * (size - 2 * r[:, None])
    dy, dx = yy - centre[:, 0, None, None], xx - centre[:, 1, None, None]  # (N, S, S)
    mask = torch.zeros((n, size, size), dtype=torch.bool, device=dev)
    for k, fn in enumerate(SHAPES.values()):
        sel = y == k
        if sel.any():
            mask[sel] = fn(dy[sel], dx[sel], r[sel, None, None])
    background = _uniform(g, (n, 3, 1, 1), 0.0, 0.3, dev)
    colour = _uniform(g, (n, 3, 1, 1), 0.6, 1.0, dev)
    img = torch.where(mask[:, None], colour, background.expand(n, 3, size, size))
    for _ in range(round(6 * clutter)):  # distractor strokes: thin random segments in random colours
        p0, p1 = _uniform(g, (n, 2), 0, size, dev), _uniform(g, (n, 2), 0, size, dev)
        stroke = _segment_distance(yy, xx, p0, p1) < 0.7
        img = torch.where(stroke[:, None], _uniform(g, (n, 3, 1, 1), 0.3, 1.0, dev), img)
    return img + clutter * 0.3 * torch.randn(img.shape, generator=g, device=dev)


def _shapes(*, seed: int, n_train: int, n_test: int, img_size: int, device: torch.device, num_classes: int = 10,
            position: str = "uniform", clutter: float = 0.0,
            object_scale: float = 1.0) -> tuple[Tensor, Tensor, Tensor, Tensor, int]:
    """`object_scale` shrinks every object's radius (1.0: 18-30 % of the image; 0.4: 7-12 %, a shape that covers a
    patch or two, so that telling a square from a diamond in clutter is hard enough to keep a model off 100 %)."""
    if not 2 <= num_classes <= len(SHAPES):
        raise NasError(f"shapes: num_classes={num_classes} is out of range; allowed 2..{len(SHAPES)} "
                       f"({', '.join(SHAPES)})")
    if position not in POSITIONS:
        raise NasError(f"shapes: position={position!r} is not allowed; use one of {POSITIONS}")
    if not 0.0 <= clutter <= 1.0:
        raise NasError(f"shapes: clutter={clutter} is out of range; allowed 0.0..1.0")
    if not 0.2 <= object_scale <= 1.0:
        raise NasError(f"shapes: object_scale={object_scale} is out of range; allowed 0.2..1.0")
    g = _rng(seed, device)
    y_tr, y_te = _balanced_labels(n_train, num_classes, g, device), _balanced_labels(n_test, num_classes, g, device)
    x_tr = _render_shapes(y_tr, img_size, position, clutter, g, object_scale)
    return x_tr, y_tr, _render_shapes(y_te, img_size, position, clutter, g, object_scale), y_te, num_classes


# ---------------------------------------------------------------------------------------------------- pathfinder
def _curve_mask(p0: Tensor, p1: Tensor, g: torch.Generator, size: int) -> Tensor:
    """A 1-pixel quadratic Bézier curve p0→p1 (N, 2) with a random bend, rasterised to (N, S, S) bool."""
    n, dev = p0.shape[0], p0.device
    mid, d = (p0 + p1) / 2, p1 - p0
    normal = torch.stack([-d[:, 1], d[:, 0]], dim=1)
    ctrl = (mid + normal * _uniform(g, (n, 1), -0.6, 0.6, dev)).clamp(0, size - 1e-3)
    t = torch.linspace(0, 1, 4 * size, device=dev)[None, :, None]  # dense enough to be 8-connected
    pts = (1 - t) ** 2 * p0[:, None] + 2 * (1 - t) * t * ctrl[:, None] + t ** 2 * p1[:, None]  # (N, T, 2)
    idx = pts.long().clamp(0, size - 1)
    flat = torch.zeros((n, size * size), dtype=torch.bool, device=dev)
    flat.scatter_(1, idx[..., 0] * size + idx[..., 1], True)
    return flat.view(n, size, size)


def _away_from(a: Tensor, g: torch.Generator, size: int) -> Tensor:
    """A point 0.35..0.75·S from each point of `a` (N, 2) in a random direction, kept 2 px inside the border."""
    n, dev = a.shape[0], a.device
    angle = _uniform(g, (n,), 0, 2 * math.pi, dev)
    dist = _uniform(g, (n,), 0.35 * size, 0.75 * size, dev)
    return (a + dist[:, None] * torch.stack([angle.sin(), angle.cos()], 1)).clamp(2, size - 2)


def _endpoints(g: torch.Generator, n: int, size: int, dev) -> tuple[Tensor, Tensor]:
    a = _uniform(g, (n, 2), 2, size - 2, dev)
    return a, _away_from(a, g, size)


def _touch(m1: Tensor, m2: Tensor) -> Tensor:
    """(N,) True where two curve masks overlap or are 8-neighbours."""
    grown = F.max_pool2d(m1[:, None].float(), 3, stride=1, padding=1)[:, 0] > 0
    return (grown & m2).flatten(1).any(1)


def _render_pathfinder(y: Tensor, size: int, distractors: int, g: torch.Generator) -> Tensor:
    """Positive (y=1): one curve joins the marked points A, B. Negative: A and B each start their own curve. Either
    way the image holds 2 + `distractors` curves of the same length distribution, none touching another, so ink,
    curve count and the A–B distance give nothing away: only tracing the curve does."""
    n, dev = y.numel(), y.device
    img = torch.zeros((n, size, size), device=dev)
    todo = torch.ones(n, dtype=torch.bool, device=dev)
    for _ in range(200):  # resample the samples whose curves touch
        idx = todo.nonzero().squeeze(1)
        if idx.numel() == 0:
            break
        m = idx.numel()
        # both labels draw the same two curves, A→X and Y→Z with X, Y ~ away(A), Z ~ away(Y); only the second
        # marker differs: on X (the curve's other end, y=1) or on Y (another curve's start, y=0)
        a, x = _endpoints(g, m, size, dev)
        y0 = _away_from(a, g, size)
        z = _away_from(y0, g, size)
        b = torch.where((y[idx] == 1)[:, None], x, y0)  # the second marker
        first, second = _curve_mask(a, x, g, size), _curve_mask(y0, z, g, size)
        curves = [first, second] + [_curve_mask(*_endpoints(g, m, size, dev), g, size) for _ in range(distractors)]
        bad = torch.zeros(m, dtype=torch.bool, device=dev)
        for i in range(len(curves)):
            for j in range(i + 1, len(curves)):
                bad |= _touch(curves[i], curves[j])
        ok = idx[~bad]
        ink = torch.stack(curves).any(0)[~bad].float() * 0.7
        for p in (a[~bad], b[~bad]):  # 3×3 bright markers on A and B
            py, px = p.long().unbind(1)
            for oy in (-1, 0, 1):
                for ox in (-1, 0, 1):
                    ink[torch.arange(ok.numel(), device=dev), (py + oy).clamp(0, size - 1),
                        (px + ox).clamp(0, size - 1)] = 1.0
        img[ok] = ink
        todo[ok] = False
    if todo.any():
        raise NasError(f"pathfinder: could not place 2 + {distractors} non-touching curves at img_size={size}; "
                       "use a larger img_size or fewer distractors")
    return img[:, None].expand(n, 3, size, size).contiguous()


def _pathfinder(*, seed: int, n_train: int, n_test: int, img_size: int, device: torch.device,
                distractors: int = 1) -> tuple[Tensor, Tensor, Tensor, Tensor, int]:
    if not 0 <= distractors <= 6:
        raise NasError(f"pathfinder: distractors={distractors} is out of range; allowed 0..6")
    if img_size < 16:
        raise NasError(f"pathfinder: img_size={img_size} is too small; allowed >= 16")
    g = _rng(seed, device)
    y_tr, y_te = _balanced_labels(n_train, 2, g, device), _balanced_labels(n_test, 2, g, device)
    x_tr = _render_pathfinder(y_tr, img_size, distractors, g)
    return x_tr, y_tr, _render_pathfinder(y_te, img_size, distractors, g), y_te, 2


# ---------------------------------------------------------------------------------------------------- real images
def _split(x: Tensor, y: Tensor, n_train: int, n_test: int, seed: int, source: str) -> tuple[Tensor, ...]:
    """A seeded train/test split of one pool of images."""
    if n_train + n_test > len(y):
        raise NasError(f"{source} holds {len(y)} images; n_train + n_test = {n_train + n_test} is too many")
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(int(seed)))
    tr, te = perm[:n_train], perm[n_train:n_train + n_test]
    return x[tr], y[tr], x[te], y[te]


def _to_size(x: Tensor, img_size: int, device: torch.device) -> Tensor:
    """(N, C, h, w) in [0, 1] → (N, 3, S, S) on the device."""
    x = x.to(device=device, dtype=torch.float32)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    if x.shape[-1] != img_size or x.shape[-2] != img_size:
        x = F.interpolate(x, size=(img_size, img_size), mode="bilinear", align_corners=False)
    return x.contiguous()


def _digits(*, seed: int, n_train: int, n_test: int, img_size: int,
            device: torch.device) -> tuple[Tensor, Tensor, Tensor, Tensor, int]:
    from sklearn.datasets import load_digits  # shipped with scikit-learn: no download

    bunch = load_digits()
    x = torch.as_tensor(bunch.images, dtype=torch.float32)[:, None] / 16.0  # (1797, 1, 8, 8)
    y = torch.as_tensor(bunch.target, dtype=torch.long)
    x_tr, y_tr, x_te, y_te = _split(x, y, n_train, n_test, seed, "digits (scikit-learn)")
    return _to_size(x_tr, img_size, device), y_tr.to(device), _to_size(x_te, img_size, device), y_te.to(device), 10


def _image_folder(*, seed: int, n_train: int, n_test: int, img_size: int, device: torch.device,
                  path: str | Path | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor, int]:
    """CIFAR-10 python pickles (data_batch_*, test_batch), a folder with train/ and val/ (or test/) class folders
    (ImageNet layout), or one folder of class sub-folders split by the seed."""
    if path is None:
        raise NasError("image_folder needs path=<local folder>; nothing is downloaded")
    root = Path(path).expanduser()
    if not root.is_dir():
        raise NasError(f"image_folder: data path {str(root)!r} does not exist or is not a folder; point `path` at a "
                       "folder of class sub-folders or at CIFAR-10's 'cifar-10-batches-py' folder (nothing is "
                       "downloaded)")
    if (root / "cifar-10-batches-py").is_dir():
        root = root / "cifar-10-batches-py"
    if (root / "test_batch").is_file():
        x_tr, y_tr, x_te, y_te, k = load_cifar(root)
        x_tr, y_tr, _, _ = _split(x_tr, y_tr, n_train, 0, seed, f"{root} (train)")
        x_te, y_te, _, _ = _split(x_te, y_te, n_test, 0, seed, f"{root} (test)")
    else:
        test_dir = next((root / d for d in ("val", "test") if (root / d).is_dir()), None)
        if (root / "train").is_dir() and test_dir is not None:
            x_tr, y_tr, classes = load_class_folders(root / "train", img_size)
            x_te, y_te, _ = load_class_folders(test_dir, img_size)
            x_tr, y_tr, _, _ = _split(x_tr, y_tr, n_train, 0, seed, f"{root}/train")
            x_te, y_te, _, _ = _split(x_te, y_te, n_test, 0, seed, str(test_dir))
        else:
            x, y, classes = load_class_folders(root, img_size)
            x_tr, y_tr, x_te, y_te = _split(x, y, n_train, n_test, seed, str(root))
        k = len(classes)
    return _to_size(x_tr, img_size, device), y_tr.to(device), _to_size(x_te, img_size, device), y_te.to(device), k


# ---------------------------------------------------------------------------------------------------- entry point
DATASETS: dict[str, Callable[..., tuple[Tensor, Tensor, Tensor, Tensor, int]]] = {
    "shapes": _shapes, "pathfinder": _pathfinder, "digits": _digits, "image_folder": _image_folder,
}
_COMMON = ("seed", "n_train", "n_test", "img_size", "device")


def dataset_knobs(name: str) -> tuple[str, ...]:
    """The extra keyword arguments (knobs) a data set accepts."""
    import inspect

    fn = DATASETS[_check_name(name)]
    return tuple(p for p in inspect.signature(fn).parameters if p not in _COMMON)


def _check_name(name: str) -> str:
    if name not in DATASETS:
        near = difflib.get_close_matches(name, DATASETS, n=3)
        hint = f"; did you mean {' or '.join(map(repr, near))}?" if near else ""
        raise NasError(f"unknown data set {name!r}{hint} Known data sets: {', '.join(DATASETS)}")
    return name


def make_dataset(name: str, *, seed: int, n_train: int, n_test: int, img_size: int,
                 device: torch.device | str = "cpu", **knobs: Any) -> Dataset:
    """Build data set `name` (see the module table) on `device`; the same seed on the same device gives the same
    tensors. Unknown names and knobs raise `NasError` listing what exists."""
    allowed = dataset_knobs(name)
    unknown = sorted(set(knobs) - set(allowed))
    if unknown:
        near = {k: difflib.get_close_matches(k, allowed, n=1) for k in unknown}
        hints = ", ".join(f"{k!r}" + (f" (did you mean {v[0]!r}?)" if v else "") for k, v in near.items())
        raise NasError(f"data set {name!r} has no knob {hints}; its knobs are: {', '.join(allowed) or '(none)'}")
    for key, value in (("n_train", n_train), ("n_test", n_test), ("img_size", img_size)):
        if not isinstance(value, int) or value < 1:
            raise NasError(f"data set {name!r}: {key}={value!r} must be a positive integer")
    dev = torch.device(device)
    x_tr, y_tr, x_te, y_te, k = DATASETS[name](seed=seed, n_train=n_train, n_test=n_test, img_size=img_size,
                                               device=dev, **knobs)
    x_tr, x_te = _standardise(x_tr, x_te)
    return Dataset(name, x_tr, y_tr, x_te, y_te, k, img_size, dict(knobs))


__all__ = ["DATASETS", "Dataset", "POSITIONS", "SHAPES", "dataset_knobs", "make_dataset"]
