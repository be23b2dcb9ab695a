"""The val split that picks a run's best epoch is held out of the training images, never taken
from the test set; which images it holds is a function of (seed, number of images)."""
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from mobilenets.core.errors import MobileNetsError
from mobilenets.datasets.classification import open_dataset, val_held_out_beside_test
from mobilenets.datasets.fashion_mnist import load_fashion_mnist

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def fmnist():
    return load_fashion_mnist(download=False)


def digests(images: torch.Tensor) -> list[str]:
    return [hashlib.sha1(img.numpy().tobytes()).hexdigest() for img in images]


def test_fashion_mnist_val_is_held_out_of_the_training_images(fmnist):
    ds = open_dataset("fashion-mnist", 28, None, in_chans=1, seed=0)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (55000, 5000, 10000)
    train_x, train_y = fmnist["train"]
    index = {h: i for i, h in enumerate(digests(train_x))}
    assert len(index) == 60000                                   # every training image is distinct
    test = set(digests(fmnist["test"][0]))
    val, kept = digests(ds.val.images), digests(ds.train.images)
    assert not set(val) & test and not set(val) & set(kept)
    assert sorted(index[h] for h in val + kept) == list(range(60000))
    # Each held-out image keeps its own label.
    assert ds.val.labels.tolist() == [train_y[index[h]].item() for h in val]
    assert torch.equal(ds.test.images, fmnist["test"][0]) and torch.equal(ds.test.labels, fmnist["test"][1])


def test_three_channel_splits_repeat_the_grayscale_images(fmnist):
    gray = open_dataset("fashion-mnist", 28, None, in_chans=1, val_fraction=100, seed=4)
    rgb = open_dataset("fashion-mnist", 28, None, in_chans=3, val_fraction=100, seed=4)
    assert rgb.val.images.shape == (100, 3, 28, 28)
    assert all(torch.equal(rgb.val.images[:, c], gray.val.images[:, 0]) for c in range(3))


def _val_digest(seed: int) -> str:
    ds = open_dataset("fashion-mnist", 28, None, in_chans=1, seed=seed)
    return hashlib.sha1(ds.val.images.numpy().tobytes() + ds.val.labels.numpy().tobytes()).hexdigest()


def test_split_is_the_same_in_another_process_and_differs_by_seed():
    code = ("from mobilenets.datasets.classification import open_dataset; import hashlib; "
            "v = open_dataset('fashion-mnist', 28, None, in_chans=1, seed=0).val; "
            "print(hashlib.sha1(v.images.numpy().tobytes() + v.labels.numpy().tobytes()).hexdigest())")
    # Another string-hash seed too: the split must not depend on Python's per-process hashing.
    env = {**os.environ, "PYTHONHASHSEED": "12345", "OMP_NUM_THREADS": "1"}
    other = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                           text=True, check=True).stdout.strip()
    assert other == _val_digest(0)
    assert _val_digest(1) != _val_digest(0)


@pytest.mark.parametrize("val_fraction, n_val", [(None, 5000), (1 / 12, 5000), (0.1, 6000), (5000, 5000),
                                                 (1, 1), (0.0, 0), (0, 0)])
def test_val_fraction_is_a_fraction_or_a_count(val_fraction, n_val):
    ds = open_dataset("fashion-mnist", 28, None, in_chans=1, val_fraction=val_fraction)
    assert len(ds.train) == 60000 - n_val and len(ds.test) == 10000
    assert (ds.val is None) == (n_val == 0) and (ds.val is None or len(ds.val) == n_val)


@pytest.mark.parametrize("val_fraction, match", [
    (1.5, r"val_fraction=1.5 is invalid; allowed: a fraction 0 <= f < 1, a number of images"),
    (-1, r"val_fraction=-1 is invalid"),
    (True, r"val_fraction=True is invalid"),
    ("0.1", r"val_fraction='0.1' is invalid"),
    (60000, r"val_fraction=60000 holds out 60000 of the 60000 training images; allowed: fewer"),
])
def test_bad_val_fraction(val_fraction, match):
    with pytest.raises(MobileNetsError, match=match):
        open_dataset("fashion-mnist", 28, None, in_chans=1, val_fraction=val_fraction)


def folder(root: Path, per_class: int, classes=("a", "b")) -> list[Path]:
    """Distinct tiny images, `per_class` in each class folder."""
    paths = []
    for label, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for j in range(per_class):
            p = root / name / f"{j}.png"
            Image.new("L", (8, 8), 10 * j + label).save(p)
            paths.append(p)
    return paths


def paths(split) -> set[Path]:
    return {p for p, _ in split.items}


def test_folder_with_test_but_no_val_holds_val_out_of_train(tmp_path):
    train = folder(tmp_path / "train", 10)
    test = folder(tmp_path / "test", 3)
    ds = open_dataset(str(tmp_path), 8, None, in_chans=1, val_fraction=0.25, seed=2)
    assert len(ds.val) == 5 and paths(ds.val) | paths(ds.train) == set(train)
    assert not paths(ds.val) & paths(ds.train) and paths(ds.test) == set(test)
    again = open_dataset(str(tmp_path), 8, None, in_chans=1, val_fraction=0.25, seed=2)
    assert [p for p, _ in again.val.items] == [p for p, _ in ds.val.items]
    other = open_dataset(str(tmp_path), 8, None, in_chans=1, val_fraction=0.25, seed=3)
    assert paths(other.val) != paths(ds.val)
    assert open_dataset(str(tmp_path), 8, None, in_chans=1).val.items.__len__() == 2   # default 10 %
    none = open_dataset(str(tmp_path), 8, None, in_chans=1, val_fraction=0)
    assert none.val is None and paths(none.train) == set(train) and set(none.splits) == {"train", "test"}
    assert val_held_out_beside_test(str(tmp_path))


def test_folder_val_stays_val_and_test_is_kept_apart(tmp_path):
    train = folder(tmp_path / "train", 4)
    val = folder(tmp_path / "val", 2)
    test = folder(tmp_path / "test", 3)
    ds = open_dataset(str(tmp_path), 8, None, in_chans=1, val_fraction=0.5)   # a val/ folder: not used
    assert (paths(ds.train), paths(ds.val), paths(ds.test)) == (set(train), set(val), set(test))
    assert not val_held_out_beside_test(str(tmp_path)) and val_held_out_beside_test("fashion-mnist")
    flat = folder(tmp_path / "flat", 6)
    ds = open_dataset(str(tmp_path / "flat"), 8, None, in_chans=1, val_fraction=4)
    assert ds.test is None and len(ds.val) == 4 and paths(ds.val) | paths(ds.train) == set(flat)
    assert not val_held_out_beside_test(str(tmp_path / "flat"))
