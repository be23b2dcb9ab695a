import gzip
import os
import shutil
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mobilenets.datasets import fashion_mnist as data
from mobilenets.datasets.splits import TensorSplit
from mobilenets.datasets.splits import Augment
from mobilenets.datasets.fashion_mnist import load_fashion_mnist
from mobilenets.datasets.classification import open_dataset
from mobilenets.datasets.folders import to_mode
from mobilenets.core.errors import MobileNetsError

FMNIST = Path(data.SYSTEM_FMNIST)


@pytest.fixture(scope="module")
def fmnist():
    return load_fashion_mnist(download=False)


@pytest.mark.needs_fmnist
def test_fashion_mnist_loads_verified_and_balanced(fmnist):
    x, y = fmnist["train"]
    assert x.shape == (60000, 1, 28, 28) and x.dtype == torch.uint8
    assert torch.bincount(y).tolist() == [6000] * 10
    xt, yt = fmnist["test"]
    assert xt.shape == (10000, 1, 28, 28) and torch.bincount(yt).tolist() == [1000] * 10
    # The dataset's published pixel statistics, which the recipes normalise with.
    assert abs(x.float().mean().item() / 255 - data.FMNIST_MEAN[0]) < 1e-3
    assert abs(x.float().std().item() / 255 - data.FMNIST_STD[0]) < 1e-3


@pytest.mark.needs_fmnist
def test_raw_idx_files_are_found_too(tmp_path, fmnist):
    for stem in data.FMNIST_FILES:
        (tmp_path / stem).write_bytes(gzip.decompress((FMNIST / f"{stem}.gz").read_bytes()))
    t = load_fashion_mnist(str(tmp_path), download=False)
    assert torch.equal(t["test"][1], fmnist["test"][1])


@pytest.mark.needs_fmnist
def test_damaged_file_is_named(tmp_path):
    for stem in data.FMNIST_FILES:
        shutil.copy(FMNIST / f"{stem}.gz", tmp_path)
    raw = bytearray(gzip.decompress((FMNIST / "t10k-labels-idx1-ubyte.gz").read_bytes()))
    raw[100] ^= 1
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(bytes(raw))
    with pytest.raises(MobileNetsError, match=r"t10k-labels-idx1-ubyte: checksum mismatch"):
        load_fashion_mnist(str(tmp_path), download=False)


def test_missing_data_names_places_and_package(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "SYSTEM_FMNIST", str(tmp_path / "nowhere"))
    monkeypatch.setenv("MOBILENETS_DATA", str(tmp_path / "env"))
    (tmp_path / "given").mkdir()   # an existing folder without the files
    with pytest.raises(MobileNetsError) as e:
        load_fashion_mnist(str(tmp_path / "given"), download=False)
    msg = str(e.value)
    assert "\n" not in msg and "apt-get install dataset-fashion-mnist" in msg
    for place in ("given", "env", "nowhere"):
        assert str(tmp_path / place) in msg


def _split(fmnist, augment, n=64):
    x, y = fmnist["train"]
    return TensorSplit(x[:n], y[:n], 28, data.FMNIST_MEAN, data.FMNIST_STD, augment)


@pytest.mark.needs_fmnist
def test_ranks_together_see_the_single_process_batch(fmnist):
    split = _split(fmnist, Augment(crop_padding=2, erasing=0.5))
    one = list(split.batches(8, seed=3, epoch=1))
    r0 = list(split.batches(4, seed=3, epoch=1, rank=0, world=2))
    r1 = list(split.batches(4, seed=3, epoch=1, rank=1, world=2))
    assert len(one) == len(r0) == len(r1) == 8
    for (x, y), (a, ya), (b, yb) in zip(one, r0, r1):
        assert torch.equal(x[0::2], a) and torch.equal(x[1::2], b)
        assert torch.equal(y[0::2], ya) and torch.equal(y[1::2], yb)


@pytest.mark.needs_fmnist
def test_resumed_epoch_sees_the_same_batches(fmnist):
    split = _split(fmnist, Augment(crop_padding=2, erasing=0.5, auto_augment="trivialaugment"))
    full = list(split.batches(8, seed=0, epoch=2))
    rest = list(split.batches(8, seed=0, epoch=2, start_step=5))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(full[5:], rest)) and len(rest) == 3
    other = list(split.batches(8, seed=0, epoch=3))
    assert not torch.equal(full[0][0], other[0][0])


@pytest.mark.needs_fmnist
def test_augmentation_keeps_labels_and_shapes_and_erases_to_mean(fmnist):
    x, y = fmnist["train"]
    plain = _split(fmnist, None)
    ref = next(plain.batches(64, 0, 0, shuffle=False))[0]
    erase = _split(fmnist, Augment(hflip=0, erasing=1.0))
    xe, ye = next(erase.batches(64, 0, 0, shuffle=False))
    assert torch.equal(ye, y[:64])
    changed = (xe != ref)
    # Every image has an erased box, and erased pixels are the mean (0 after normalising).
    assert changed.flatten(1).any(1).all()
    assert xe[changed].abs().max() < 0.02
    flip = _split(fmnist, Augment(hflip=1.0))
    xf, _ = next(flip.batches(64, 0, 0, shuffle=False))
    assert torch.equal(xf, ref.flip(-1))


def _png(arr: np.ndarray, path: Path, mode: str):
    img = Image.fromarray(arr, "L")
    if mode == "I;16":
        img = Image.fromarray(arr.astype(np.uint16) * 257)
    elif mode == "RGBA":
        rgba = np.dstack([arr, arr, arr, np.full_like(arr, 255)])
        rgba[:4, :4, 3] = 0  # transparent corner: must come out white
        img = Image.fromarray(rgba, "RGBA")
    elif mode == "P":
        img = img.convert("RGB").quantize(256)
    elif mode == "CMYK":
        img = img.convert("RGB").convert("CMYK")
        path = path.with_suffix(".jpg")
        img.save(path, quality=100)
        return path
    img.save(path)
    return path


@pytest.mark.needs_fmnist
def test_modes_convert_to_the_same_pixels(tmp_path, fmnist):
    arr = fmnist["train"][0][0, 0].numpy()
    for mode in ("L", "I;16", "RGBA", "P", "CMYK"):
        path = _png(arr, tmp_path / f"img_{mode.replace(';', '')}.png", mode)
        with Image.open(path) as im:
            gray = np.asarray(to_mode(im, 1), dtype=np.int16)
            rgb = np.asarray(to_mode(im, 3))
        assert rgb.shape == (28, 28, 3)
        ref = arr.astype(np.int16)
        if mode == "RGBA":
            assert (gray[:4, :4] == 255).all()
            ref = ref.copy()
            ref[:4, :4] = 255
        tol = {"CMYK": 6, "P": 1}.get(mode, 0)
        assert np.abs(gray - ref).max() <= tol, mode


def make_folder(root: Path, fmnist, per_class=8, classes=("Bag", "Sandal", "Trouser"), bad=True):
    x, y = fmnist["test"]
    names = data.FMNIST_CLASSES
    for name in classes:
        d = root / name
        d.mkdir(parents=True)
        idx = (y == names.index(name)).nonzero().flatten()[:per_class]
        for j, i in enumerate(idx.tolist()):
            Image.fromarray(x[i, 0].numpy(), "L").save(d / f"{j}.png")
    if bad:
        (root / classes[0] / "empty.png").write_bytes(b"")
        (root / classes[1] / "notes.jpg").write_text("not an image")
        good = (root / classes[2] / "0.png").read_bytes()
        (root / classes[2] / "cut.png").write_bytes(good[: len(good) // 2])
        jpg = root / classes[0] / "cut.jpg"
        Image.fromarray(np.random.RandomState(0).randint(0, 256, (64, 64), np.uint8), "L").save(jpg, quality=95)
        jpg.write_bytes(jpg.read_bytes()[:1000])  # header intact, pixels missing
    return root


@pytest.mark.needs_fmnist
def test_folder_skips_bad_files_with_warnings(tmp_path, fmnist):
    make_folder(tmp_path, fmnist)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        ds = open_dataset(str(tmp_path), 28, Augment(), in_chans=1, val_fraction=0.25, seed=0)
        batches = list(ds.train.batches(1, 0, 0)) + list(ds.val.batches(4, 0, 0, shuffle=False, drop_last=False))
    messages = [str(m.message) for m in w]
    assert ds.classes == ["Bag", "Sandal", "Trouser"]
    # cut.jpg passes the header check and is caught while decoding, without stopping the epoch.
    assert sorted(Path(p).name for p in ds.skipped) == ["cut.jpg", "cut.png", "empty.png", "notes.jpg"]
    for name in ("empty.png", "notes.jpg", "cut.png", "cut.jpg"):
        assert any(name in m for m in messages), name
    seen = sum(len(b[1]) for b in batches)
    assert len(ds.train) + len(ds.val) == 25
    assert seen == 24
    assert all(b[0].shape[1:] == (1, 28, 28) for b in batches)


@pytest.mark.needs_fmnist
def test_folder_strict_fails_before_training(tmp_path, fmnist):
    make_folder(tmp_path, fmnist)
    with pytest.raises(MobileNetsError, match=r"(empty|notes|cut)\.(png|jpg): .*--strict"):
        open_dataset(str(tmp_path), 28, Augment(), in_chans=1, strict=True)


@pytest.mark.needs_fmnist
def test_folder_train_val_layout_and_seeded_split(tmp_path, fmnist):
    make_folder(tmp_path / "train", fmnist, bad=False)
    make_folder(tmp_path / "val", fmnist, per_class=2, bad=False)
    ds = open_dataset(str(tmp_path), 32, None, in_chans=3)
    assert (len(ds.train), len(ds.val)) == (24, 6)
    x, y = next(ds.val.batches(6, 0, 0, shuffle=False, drop_last=False))
    assert x.shape == (6, 3, 32, 32) and y.tolist() == [0, 0, 1, 1, 2, 2]
    flat = tmp_path / "flat"
    make_folder(flat, fmnist, bad=False)
    a = open_dataset(str(flat), 28, None, in_chans=1, val_fraction=0.25, seed=5)
    b = open_dataset(str(flat), 28, None, in_chans=1, val_fraction=0.25, seed=5)
    assert [p for p, _ in a.val.items] == [p for p, _ in b.val.items] and len(a.val) == 6


def test_bad_data_arguments(tmp_path):
    with pytest.raises(MobileNetsError, match="neither 'fashion-mnist' nor an existing directory"):
        open_dataset(str(tmp_path / "missing"), None, None)
    (tmp_path / "empty").mkdir()
    with pytest.raises(MobileNetsError, match="no class folders"):
        open_dataset(str(tmp_path / "empty"), None, None)
    with pytest.raises(MobileNetsError, match="auto_augment"):
        Augment.from_config({"auto_augment": "randaugment"})


def test_data_dir_that_does_not_exist_is_refused(tmp_path):
    # The system copy exists, so falling back to it would succeed: the named folder must win.
    assert FMNIST.is_dir()
    for call in (lambda d: load_fashion_mnist(d, download=False), lambda d: open_dataset("fashion-mnist", None, None, d)):
        with pytest.raises(MobileNetsError, match=r"data_dir=.*typo: no such directory"):
            call(str(tmp_path / "typo"))


def test_one_class_folder_is_refused(tmp_path, fmnist):
    make_folder(tmp_path, fmnist, classes=("Bag",), bad=False)
    with pytest.raises(MobileNetsError, match=r"one class folder \('Bag'\); a classifier needs at least 2"):
        open_dataset(str(tmp_path), 28, Augment(), in_chans=1)


def _png_header(width: int, height: int) -> bytes:
    """A 57-byte PNG that declares width x height 8-bit gray pixels (and holds none)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))


def test_entries_that_are_no_image_files_are_skipped_and_counted(tmp_path, fmnist):
    root = make_folder(tmp_path / "data", fmnist, bad=False)
    # 30000 x 30000 = 9e8 pixels: over twice PIL's MAX_IMAGE_PIXELS (89,478,485), so PIL
    # refuses it as a decompression bomb; the file itself is 57 bytes.
    (root / "Bag" / "bomb.png").write_bytes(_png_header(30000, 30000))
    assert 30000 * 30000 > 2 * Image.MAX_IMAGE_PIXELS
    (root / "Sandal" / "folder.png").mkdir()
    os.symlink("loop.png", root / "Trouser" / "loop.png")       # a link to itself
    os.symlink("missing.jpg", root / "Trouser" / "dangling.jpg")
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        ds = open_dataset(str(root), 28, Augment(), in_chans=1, val_fraction=0.25, seed=0)
        seen = sum(len(y) for _, y in ds.train.batches(4, 0, 0, drop_last=False))
    messages = " ".join(str(m.message) for m in w)
    bad = ["bomb.png", "dangling.jpg", "folder.png", "loop.png"]
    assert sorted(Path(p).name for p in ds.skipped) == bad
    for name in bad:
        assert f"{name}: " in messages
    assert "decompression bomb" in messages and "a directory, not an image file" in messages
    assert "loops or points nowhere" in messages
    # make_folder wrote 8 images per class; only they are left to train and validate on.
    assert len(ds.train) + len(ds.val) == 24 and seen == len(ds.train)
    for name in bad:
        only = tmp_path / "strict" / name
        shutil.copytree(root, only, symlinks=True, ignore=lambda d, names: [n for n in names if n in bad and n != name])
        with pytest.raises(MobileNetsError, match=rf"{name}: .*--strict"):
            open_dataset(str(only), 28, Augment(), in_chans=1, strict=True)


def test_folder_batches_leave_the_global_rng_alone(tmp_path, fmnist):
    """Dropout draws from torch's global RNG, so a resumed epoch sees the same masks only if
    loading the data draws nothing from it."""
    make_folder(tmp_path, fmnist, bad=False)
    ds = open_dataset(str(tmp_path), 28, Augment(), in_chans=1, val_fraction=0.25, seed=0)
    torch.manual_seed(1)
    before = torch.get_rng_state()
    for _ in ds.train.batches(4, 0, 0, start_step=1):
        pass
    assert torch.equal(torch.get_rng_state(), before)
