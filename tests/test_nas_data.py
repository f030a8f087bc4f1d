"""Data sets: deterministic per seed, balanced, knobs act, errors name what is wrong."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from nas.data import SHAPES, make_dataset
from nas.errors import NasError

SMALL = dict(n_train=60, n_test=20, img_size=16)


@pytest.mark.parametrize("name,knobs,size", [("shapes", {}, 16), ("pathfinder", {}, 32), ("digits", {}, 16)])
def test_same_seed_same_tensors_other_seed_differs(name, knobs, size):
    kw = dict(SMALL, img_size=size, **knobs)
    a, b, c = (make_dataset(name, seed=s, **kw) for s in (0, 0, 1))
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_train, b.y_train)
    assert torch.equal(a.x_test, b.x_test)
    assert not torch.equal(a.x_train, c.x_train)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_generated_on_cuda_and_deterministic_there():
    a, b = (make_dataset("shapes", seed=3, device="cuda", **SMALL) for _ in range(2))
    assert a.x_train.device.type == "cuda" and torch.equal(a.x_train, b.x_train)


@pytest.mark.parametrize("name,k,size", [("shapes", 10, 16), ("pathfinder", 2, 32), ("digits", 10, 16)])
def test_shapes_dtypes_labels_and_balance(name, k, size):
    d = make_dataset(name, seed=0, n_train=100, n_test=40, img_size=size)
    assert d.x_train.shape == (100, 3, size, size) and d.x_test.shape == (40, 3, size, size)
    assert d.x_train.dtype == torch.float32 and d.y_train.dtype == torch.long
    assert d.num_classes == k and int(d.y_train.min()) >= 0 and int(d.y_train.max()) < k
    assert torch.isfinite(d.x_train).all()
    assert abs(float(d.x_train.mean())) < 1e-3 and abs(float(d.x_train.std()) - 1) < 0.05  # standardised
    if name != "digits":  # generated sets are exactly balanced
        counts = torch.bincount(d.y_train, minlength=k)
        assert int(counts.max() - counts.min()) <= 1


def test_shapes_num_classes_knob():
    d = make_dataset("shapes", seed=0, num_classes=4, **SMALL)
    assert d.num_classes == 4 and set(d.y_train.tolist()) == {0, 1, 2, 3}
    assert len(SHAPES) >= 10


def _raw_spread(position: str) -> float:
    """Std over images of the foreground's centre of mass (knob `position`)."""
    d = make_dataset("shapes", seed=0, n_train=200, n_test=10, img_size=32, position=position)
    fg = (d.x_train.mean(1) > d.x_train.mean(1).flatten(1).median(1).values[:, None, None] + 0.5).float()
    ys = torch.arange(32.0)
    cy = (fg.sum(2) * ys).sum(1) / fg.sum((1, 2)).clamp_min(1)
    return float(cy.std())


def test_position_knob_moves_objects():
    assert _raw_spread("uniform") > 2 * _raw_spread("centred")


def test_clutter_knob_adds_structure_outside_the_object():
    clean = make_dataset("shapes", seed=0, clutter=0.0, **SMALL)
    busy = make_dataset("shapes", seed=0, clutter=1.0, **SMALL)
    # a clean image is two colours (object, background): few distinct values per image; clutter adds many
    distinct = lambda d: np.mean([len(torch.unique(x[0])) for x in d.x_train[:20]])
    assert distinct(busy) > 5 * distinct(clean)


def test_pathfinder_image_size_sets_sequence_length():
    assert make_dataset("pathfinder", seed=0, n_train=8, n_test=4, img_size=48).x_train.shape[-1] == 48


def test_image_folder_class_subfolders_and_cifar(tmp_path):
    from PIL import Image

    for cls in ("cat", "dog"):
        (tmp_path / "f" / cls).mkdir(parents=True)
        for i in range(5):
            Image.new("RGB", (10, 12), (40 * i, 200 if cls == "dog" else 0, 0)).save(tmp_path / "f" / cls / f"{i}.png")
    d = make_dataset("image_folder", seed=0, n_train=6, n_test=4, img_size=8, path=str(tmp_path / "f"))
    assert d.num_classes == 2 and d.x_train.shape == (6, 3, 8, 8)

    cifar = tmp_path / "cifar-10-batches-py"
    cifar.mkdir()
    rng = np.random.default_rng(0)
    for name in ("data_batch_1", "test_batch"):
        with open(cifar / name, "wb") as f:
            pickle.dump({b"data": rng.integers(0, 255, (20, 3072), dtype=np.uint8),
                         b"labels": list(range(10)) * 2}, f)
    d = make_dataset("image_folder", seed=0, n_train=12, n_test=5, img_size=16, path=str(tmp_path))
    assert d.num_classes == 10 and d.x_train.shape == (12, 3, 16, 16) and d.x_test.shape == (5, 3, 16, 16)


def test_missing_path_names_it(tmp_path):
    missing = tmp_path / "no_such_dir"
    with pytest.raises(NasError, match="no_such_dir"):
        make_dataset("image_folder", seed=0, n_train=4, n_test=2, img_size=8, path=str(missing))


def test_unknown_name_and_knobs_are_clear():
    with pytest.raises(NasError, match="did you mean 'shapes'"):
        make_dataset("shape", seed=0, **SMALL)
    with pytest.raises(NasError, match="did you mean 'clutter'"):
        make_dataset("shapes", seed=0, clutr=0.5, **SMALL)
    with pytest.raises(NasError, match="position='left'"):
        make_dataset("shapes", seed=0, position="left", **SMALL)
    with pytest.raises(NasError, match="clutter=2"):
        make_dataset("shapes", seed=0, clutter=2, **SMALL)
    with pytest.raises(NasError, match="too many"):
        make_dataset("digits", seed=0, n_train=2000, n_test=10, img_size=8)


def test_pathfinder_gives_no_ink_shortcut():
    """Both labels draw the same number of curves of the same lengths: mean ink per label within 5%."""
    d = make_dataset("pathfinder", seed=0, n_train=400, n_test=10, img_size=32)
    x = d.x_train[:, 0]
    ink = (x > x.min() + 0.1).float().flatten(1).sum(1)
    pos, neg = float(ink[d.y_train == 1].mean()), float(ink[d.y_train == 0].mean())
    assert abs(pos - neg) < 0.05 * neg
