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


def test_object_scale_knob_shrinks_objects_and_keeps_the_default_stream():
    def object_area(scale: float) -> float:  # clean images: the object is the pixels brighter than the background
        d = make_dataset("shapes", seed=0, clutter=0.0, object_scale=scale, **SMALL)
        return float(torch.stack([(x[0] > x[0].median() + 1e-3).float().mean() for x in d.x_train[:40]]).mean())

    assert object_area(0.4) < 0.35 * object_area(1.0)  # area goes as the radius squared (0.16), shape by shape
    default, explicit = make_dataset("shapes", seed=0, **SMALL), make_dataset("shapes", seed=0, object_scale=1.0,
                                                                                **SMALL)
    assert torch.equal(default.x_train, explicit.x_train)  # studies written before the knob see the same images
    with pytest.raises(NasError, match="object_scale=0.1 is out of range"):
        make_dataset("shapes", seed=0, object_scale=0.1, **SMALL)


def test_pathfinder_image_size_sets_sequence_length():
    assert make_dataset("pathfinder", seed=0, n_train=8, n_test=4, img_size=48).x_train.shape[-1] == 48


COLOURS = {"blue": (0, 0, 220), "green": (0, 200, 0), "red": (230, 0, 0)}  # class folders, sorted by name


def _class_folder(root, n: int = 4, brightness: float = 1.0) -> None:
    """PNG files written with PIL: each class a solid colour (so a label can be checked against its pixels)."""
    from PIL import Image

    for cls, rgb in COLOURS.items():
        (root / cls).mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", (10 + i, 12), tuple(int(c * brightness) for c in rgb)).save(root / cls / f"{i}.png")
    (root / "red" / "notes.txt").write_text("not an image")  # ignored


def test_image_folder_of_class_subfolders_labels_match_pixels(tmp_path):
    _class_folder(tmp_path / "f")
    d = make_dataset("image_folder", seed=0, n_train=8, n_test=4, img_size=8, path=str(tmp_path / "f"))
    assert d.num_classes == 3 and d.x_train.shape == (8, 3, 8, 8) and d.x_test.shape == (4, 3, 8, 8)
    for x, y in zip(torch.cat([d.x_train, d.x_test]), torch.cat([d.y_train, d.y_test])):
        assert int(x.mean((1, 2)).argmax()) == {0: 2, 1: 1, 2: 0}[int(y)]  # blue → B, green → G, red → R channel
    again = make_dataset("image_folder", seed=0, n_train=8, n_test=4, img_size=8, path=str(tmp_path / "f"))
    assert torch.equal(d.x_train, again.x_train) and torch.equal(d.y_test, again.y_test)


def test_image_folder_imagenet_layout_tests_on_val(tmp_path):
    _class_folder(tmp_path / "train", n=3)
    _class_folder(tmp_path / "val", n=2, brightness=0.5)  # val images are darker: the test split must be them
    d = make_dataset("image_folder", seed=1, n_train=9, n_test=6, img_size=8, path=str(tmp_path))
    raw = lambda x: x.amax((1, 2, 3))  # noqa: E731  the brightest channel (standardised)
    assert float(raw(d.x_test).max()) < float(raw(d.x_train).min())
    with pytest.raises(NasError, match="holds 6 images"):
        make_dataset("image_folder", seed=0, n_train=9, n_test=7, img_size=8, path=str(tmp_path))


def _cifar_dir(root, protocol: int = 2, n: int = 20):
    """A fake `cifar-10-batches-py`: every image's pixels equal 12·label, so labels can be checked."""
    cifar = root / "cifar-10-batches-py"
    cifar.mkdir(parents=True)
    labels = [i % 10 for i in range(n)]
    for name in ("data_batch_1", "data_batch_2", "test_batch"):
        batch = {b"batch_label": name.encode(), b"labels": labels, b"filenames": [b"x.png"] * n,
                 b"data": np.repeat(np.array(labels, dtype=np.uint8)[:, None] * 12, 3072, axis=1)}
        (cifar / name).write_bytes(pickle.dumps(batch, protocol=protocol))
    return cifar


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_cifar_batches_load_with_labels_matching_pixels(tmp_path, protocol):
    _cifar_dir(tmp_path, protocol)
    d = make_dataset("image_folder", seed=0, n_train=30, n_test=12, img_size=16, path=str(tmp_path))
    assert d.num_classes == 10 and d.x_train.shape == (30, 3, 16, 16) and d.x_test.shape == (12, 3, 16, 16)
    for x, y in ((d.x_train, d.y_train), (d.x_test, d.y_test)):
        order = torch.argsort(x.mean((1, 2, 3)))
        assert torch.equal(y[order], torch.sort(y).values)  # brightness rises with the label


def test_cifar_files_written_by_numpy_1_still_load(tmp_path):
    """The published batches name numpy.core.multiarray (numpy 1); numpy 2 calls it numpy._core."""
    cifar = _cifar_dir(tmp_path)
    for f in cifar.iterdir():
        f.write_bytes(f.read_bytes().replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    assert b"numpy.core.multiarray" in (cifar / "test_batch").read_bytes()
    d = make_dataset("image_folder", seed=0, n_train=10, n_test=5, img_size=8, path=str(cifar))
    assert d.num_classes == 10 and d.y_test.shape == (5,)


class _Payload:
    """Unpickling this calls open(marker, "w"): the file appears if the loader ever runs code from a batch."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import builtins

        return builtins.open, (self.marker, "w")


@pytest.mark.parametrize("where", ["top", "inside"])
def test_a_malicious_cifar_pickle_is_refused_without_running(tmp_path, where):
    cifar = _cifar_dir(tmp_path)
    marker = tmp_path / "pwned"
    payload = _Payload(marker) if where == "top" else {b"labels": [0], b"data": [_Payload(marker)]}
    (cifar / "data_batch_1").write_bytes(pickle.dumps(payload, protocol=2))
    with pytest.raises(NasError, match=r"data_batch_1 is not a CIFAR-10 python batch: it asks to load "
                                       r"(builtins|io)\.open.*not unpickled"):
        make_dataset("image_folder", seed=0, n_train=10, n_test=5, img_size=8, path=str(tmp_path))
    assert not marker.exists()


def test_cifar_batches_of_the_wrong_shape_are_refused(tmp_path):
    cifar = _cifar_dir(tmp_path)
    (cifar / "test_batch").write_bytes(pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}))
    with pytest.raises(NasError, match="test_batch is not a CIFAR-10 python batch: expected a dict"):
        make_dataset("image_folder", seed=0, n_train=10, n_test=2, img_size=8, path=str(tmp_path))
    (cifar / "test_batch").write_bytes(b"not a pickle")
    with pytest.raises(NasError, match="test_batch is not a readable CIFAR-10 python batch"):
        make_dataset("image_folder", seed=0, n_train=10, n_test=2, img_size=8, path=str(tmp_path))


@pytest.mark.parametrize("study", ["cls_token_position", "vmamba_scan_routes"])
def test_any_study_can_be_pointed_at_a_local_folder(tmp_path, study, monkeypatch):
    """The README's override: name and knobs together, so a study's own knobs (clutter, ...) are replaced."""
    from pathlib import Path

    from nas.config import load_study

    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    _class_folder(tmp_path / "imgs")
    sf = load_study(study, profile="h200", sets=["data.name=image_folder", f"data.knobs={{path: {tmp_path / 'imgs'}}}",
                                                "data.n_train=16", "data.n_test=16", "data.img_size=16"])
    data = sf.study.data
    assert data.name == "image_folder" and data.knobs == {"path": str(tmp_path / "imgs")}
    d = make_dataset(data.name, seed=0, n_train=8, n_test=4, img_size=data.img_size, **data.knobs)
    assert d.num_classes == 3


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
