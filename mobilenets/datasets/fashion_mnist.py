"""Fashion-MNIST from its IDX files (the system's dataset package, a folder, or a download),
MD5-checked and held in memory as uint8 tensors."""
from __future__ import annotations

import gzip
import hashlib
import os
import urllib.error
import urllib.request
from pathlib import Path

import torch

from ..core.errors import MobileNetsError
from ..core.io import atomic_write_bytes


FMNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                  "Sneaker", "Bag", "Ankle boot"]
FMNIST_MEAN, FMNIST_STD = (0.2860,), (0.3530,)
FMNIST_FILES = {  # stem: MD5 of the uncompressed IDX file (Debian recompresses the .gz files)
    "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
    "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
    "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
    "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
}
FMNIST_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
FMNIST_GZ_MD5 = {  # upstream's checksums of its own .gz files
    "train-images-idx3-ubyte": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte": "bb300cfdad3c16e7a12e480ee83cd310",
}
SYSTEM_FMNIST = "/usr/share/datasets/fashion-mnist"


def fashion_mnist_places(data_dir: str | None = None) -> list[Path]:
    """Where the idx files are looked for, in order."""
    places = [data_dir, os.environ.get("MOBILENETS_DATA"), SYSTEM_FMNIST]
    out = []
    for p in places:
        if p:
            p = Path(p).expanduser()
            out += [p, p / "fashion-mnist", p / "FashionMNIST" / "raw"]
    return out


def _find_idx(stem: str, places: list[Path]) -> Path | None:
    for d in places:
        for name in (stem, stem + ".gz"):
            if (d / name).is_file():
                return d / name
    return None


def _read_idx(path: Path, md5: str) -> torch.Tensor:
    raw = path.read_bytes()
    try:
        data = gzip.decompress(raw) if path.suffix == ".gz" else raw
    except (OSError, EOFError) as e:
        raise MobileNetsError(f"{path}: not a readable gzip file ({e})") from None
    if hashlib.md5(data).hexdigest() != md5:
        raise MobileNetsError(f"{path}: checksum mismatch (MD5 of the IDX contents is not {md5}); "
                              "the file is damaged or not Fashion-MNIST")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return torch.frombuffer(bytearray(data[4 + 4 * ndim:]), dtype=torch.uint8).reshape(dims)


def _download_fashion_mnist(dest: Path) -> bool:
    """Fetch the four files from upstream with its checksums; False when offline."""
    got = {}
    for stem, gz_md5 in FMNIST_GZ_MD5.items():
        try:
            with urllib.request.urlopen(FMNIST_URL + stem + ".gz", timeout=30) as r:
                blob = r.read()
        except (urllib.error.URLError, OSError, TimeoutError):
            return False
        if hashlib.md5(blob).hexdigest() != gz_md5:
            raise MobileNetsError(f"{FMNIST_URL}{stem}.gz: downloaded file fails upstream's MD5 {gz_md5}")
        got[stem] = blob
    for stem, blob in got.items():
        atomic_write_bytes(dest / (stem + ".gz"), blob)
    return True


def load_fashion_mnist(data_dir: str | None = None, download: bool = True) -> dict:
    """{"train": (images N×1×28×28 uint8, labels int64), "test": (...)} from the first place
    that has all four files; downloads into the first writable place when none has them."""
    if data_dir is not None and not Path(data_dir).expanduser().is_dir():
        # Falling back to another copy would train on data the caller did not name.
        raise MobileNetsError(f"data_dir={data_dir}: no such directory; give the folder that holds the "
                              "Fashion-MNIST idx files, or leave data_dir unset for the usual places")
    places = fashion_mnist_places(data_dir)
    found = {stem: _find_idx(stem, places) for stem in FMNIST_FILES}
    if not all(found.values()) and download:
        dest = Path(data_dir or os.environ.get("MOBILENETS_DATA")
                    or Path.home() / ".cache" / "mobilenets" / "fashion-mnist")
        places.insert(0, dest)
        if not all(found.values()) and _download_fashion_mnist(dest):
            found = {stem: _find_idx(stem, [dest]) for stem in FMNIST_FILES}
    missing = [s for s, p in found.items() if p is None]
    if missing:
        searched = ", ".join(dict.fromkeys(str(p) for p in places))
        raise MobileNetsError(f"Fashion-MNIST not found ({missing[0]}[.gz] missing); searched {searched}; "
                              "install it with `apt-get install dataset-fashion-mnist` or pass --data-dir")
    t = {stem: _read_idx(found[stem], md5) for stem, md5 in FMNIST_FILES.items()}
    return {"train": (t["train-images-idx3-ubyte"].unsqueeze(1), t["train-labels-idx1-ubyte"].long()),
            "test": (t["t10k-images-idx3-ubyte"].unsqueeze(1), t["t10k-labels-idx1-ubyte"].long())}
