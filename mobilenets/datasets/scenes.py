"""A detection and segmentation data set built from Fashion-MNIST: several items per canvas at
random scales and positions over varied backgrounds, with exact boxes and pixel masks taken from
the pixels each item covers. Written as COCO (JSON + JPEG) and VOC-style (JPEG + index PNG).

Train scenes use items of Fashion-MNIST's training split and validation scenes items of its test
split, so no item is shared between them. Everything follows from the seed.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from PIL import Image

from .fashion_mnist import FMNIST_CLASSES, load_fashion_mnist
from ..core.errors import MobileNetsError
from ..core.io import atomic_path, atomic_write_text

CLASSES = tuple(FMNIST_CLASSES)
# An item pixel belongs to the item's silhouette above this intensity (of 255).
SILHOUETTE = 24
MAX_OCCLUDED = 0.3      # a new item may hide at most this share of an earlier one
MIN_ITEM_FRACTION, MAX_ITEM_FRACTION = 0.22, 0.55   # item side / canvas side
VOC_PALETTE = [0, 0, 0, 128, 0, 0, 0, 128, 0, 128, 128, 0, 0, 0, 128, 128, 0, 128, 0, 128, 128,
               128, 128, 128, 64, 0, 0, 192, 0, 0, 64, 128, 0]


def load_items(split: str, data_dir: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST images (N, 28, 28) and labels of `split` ("train" or "val" = test set)."""
    images, labels = load_fashion_mnist(data_dir, download=False)["train" if split == "train" else "test"]
    return images[:, 0].numpy(), labels.numpy()


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """One of four kinds: two-colour gradient, noisy flat colour, stripes or checks, and
    smooth blotches; float RGB in [0, 1]."""
    kind = rng.integers(4)
    c1, c2 = rng.random(3), rng.random(3)
    yy, xx = np.mgrid[0:size, 0:size] / size
    if kind == 0:
        angle = rng.random() * 2 * np.pi
        t = (np.cos(angle) * xx + np.sin(angle) * yy)
        t = (t - t.min()) / max(np.ptp(t), 1e-6)
        img = c1 * (1 - t[..., None]) + c2 * t[..., None]
    elif kind == 1:
        img = np.broadcast_to(c1, (size, size, 3)) + rng.normal(0, 0.08, (size, size, 3))
    elif kind == 2:
        period = rng.integers(6, 24)
        if rng.random() < 0.5:
            t = ((xx * size // period) % 2).astype(float)
        else:
            t = (((xx * size // period) + (yy * size // period)) % 2).astype(float)
        img = c1 * (1 - t[..., None]) + c2 * t[..., None]
    else:
        low = rng.random((4, 4, 3))
        img = np.asarray(Image.fromarray((low * 255).astype(np.uint8)).resize(
            (size, size), Image.BICUBIC), dtype=float) / 255
    return np.clip(img, 0, 1)


def _place(rng, size: int, side: int, masks: list[np.ndarray], item_mask: np.ndarray):
    """A position where the item hides at most MAX_OCCLUDED of any earlier item, or None."""
    for _ in range(30):
        y, x = rng.integers(0, size - side + 1, 2)
        window = np.zeros((size, size), bool)
        window[y:y + side, x:x + side] = item_mask
        if all((m & window).sum() <= MAX_OCCLUDED * m.sum() for m in masks):
            return y, x, window
    return None


def make_scene(rng: np.random.Generator, images: np.ndarray, labels: np.ndarray, size: int,
               max_items: int = 4):
    """(RGB uint8 image, per-item list of (class index 0-9, visible boolean mask))."""
    canvas = _background(rng, size)
    n = 0 if rng.random() < 0.03 else int(rng.integers(1, max_items + 1))
    placed: list[tuple[int, np.ndarray]] = []
    for _ in range(n):
        k = int(rng.integers(len(images)))
        side = int(rng.integers(int(MIN_ITEM_FRACTION * size), int(MAX_ITEM_FRACTION * size) + 1))
        item = Image.fromarray(images[k])
        if rng.random() < 0.5:
            item = item.transpose(Image.FLIP_LEFT_RIGHT)
        gray = np.asarray(item.resize((side, side), Image.BILINEAR), dtype=float)
        mask = gray > SILHOUETTE
        if not mask.any():
            continue
        spot = _place(rng, size, side, [m for _, m in placed], mask)
        if spot is None:
            continue
        y, x, window = spot
        # Colour the item: a random tint shaded by the item's own intensities, contrasting
        # with the background under it.
        under = canvas[y:y + side, x:x + side][mask].mean(0)
        tint = rng.random(3)
        if np.abs(tint - under).sum() < 0.6:
            tint = 1 - under
        shade = 0.35 + 0.65 * gray[..., None] / 255
        patch = canvas[y:y + side, x:x + side]
        patch[mask] = np.clip(tint * shade, 0, 1)[mask]
        placed = [(c, m & ~window) for c, m in placed]
        placed.append((int(labels[k]), window))
    placed = [(c, m) for c, m in placed if m.any()]
    return (canvas * 255).round().astype(np.uint8), placed


def _box(mask: np.ndarray) -> list[int]:
    ys, xs = np.nonzero(mask)
    return [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]


def _rle(mask: np.ndarray) -> dict:
    from pycocotools import mask as mask_utils
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": rle["size"], "counts": rle["counts"].decode("ascii")}


def _save_image(path: Path, image: Image.Image, **kw) -> None:
    with atomic_path(path) as tmp:
        image.save(tmp, format=path.suffix.lstrip(".").upper().replace("JPG", "JPEG"), **kw)


# The largest canvas side: 28 px items on a canvas this size are already specks, and each side
# doubling quadruples what every image and mask of the set takes.
MAX_SCENE_SIZE = 2048


def write_scenes(out: str | os.PathLike, train: int = 4000, val: int = 500, size: int = 128,
                 seed: int = 0, data_dir: str | None = None, progress: bool = True) -> dict:
    """Write `out`/coco/{images/<split>/, annotations/instances_<split>.json} and
    `out`/voc/{JPEGImages, SegmentationClass, ImageSets/Segmentation/<split>.txt, classes.txt}.
    Returns the number of images and objects per split."""
    from tqdm import tqdm
    for key, value, low in (("train", train, 0), ("val", val, 0), ("size", size, 32)):
        if not isinstance(value, int) or value < low:
            raise MobileNetsError(f"{key}={value!r} is out of range; allowed: integer >= {low}")
    if size > MAX_SCENE_SIZE:
        raise MobileNetsError(f"size={size!r} is out of range; allowed: integer in "
                              f"[32, {MAX_SCENE_SIZE}]")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise MobileNetsError(f"{out}: is a file; expected the folder to write coco/ and voc/ into")
    coco, voc = out / "coco", out / "voc"
    categories = [{"id": i + 1, "name": name, "supercategory": "fashion"} for i, name in enumerate(CLASSES)]
    atomic_write_text(voc / "classes.txt", "\n".join(("background", *CLASSES)) + "\n")
    summary = {}
    for split, count, split_seed in (("train", train, seed), ("val", val, seed + 1)):
        images, labels = load_items(split, data_dir)
        rng = np.random.default_rng(split_seed)
        doc = {"info": {"description": f"mobilenets scenes ({split}), seed {seed}"},
               "images": [], "annotations": [], "categories": categories}
        names = []
        for i in tqdm(range(count), desc=f"scenes {split}", disable=not progress):
            canvas, items = make_scene(rng, images, labels, size)
            name = f"{split}_{i:06d}"
            names.append(name)
            picture = Image.fromarray(canvas)
            _save_image(coco / "images" / split / f"{name}.jpg", picture, quality=95)
            _save_image(voc / "JPEGImages" / f"{name}.jpg", picture, quality=95)
            index = np.zeros((size, size), np.uint8)
            image_id = i + 1
            doc["images"].append({"id": image_id, "file_name": f"{split}/{name}.jpg",
                                  "width": size, "height": size})
            for cls, mask in items:
                index[mask] = cls + 1
                doc["annotations"].append({
                    "id": len(doc["annotations"]) + 1, "image_id": image_id, "category_id": cls + 1,
                    "bbox": _box(mask), "area": int(mask.sum()), "iscrowd": 0,
                    "segmentation": _rle(mask)})
            png = Image.fromarray(index, mode="P")
            png.putpalette(VOC_PALETTE)
            _save_image(voc / "SegmentationClass" / f"{name}.png", png)
        atomic_write_text(coco / "annotations" / f"instances_{split}.json", json.dumps(doc))
        atomic_write_text(voc / "ImageSets" / "Segmentation" / f"{split}.txt", "\n".join(names) + "\n")
        summary[split] = {"images": count, "objects": len(doc["annotations"])}
    return summary
