"""Readers for COCO-format detection (JSON + images, indexed by pycocotools) and VOC-style
segmentation (images + index PNG masks), with box- and mask-aware augmentation from torchvision
transforms v2.

Bad annotations never stop an epoch: they are found when the data set is opened, dropped, and
reported in one warning that counts them; images without objects are kept.
"""
from __future__ import annotations

import contextlib
import copy
import io
import json
import warnings
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

from ..core.errors import MobileNetsError

VOC_CLASSES = ("background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
               "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
               "sheep", "sofa", "train", "tvmonitor")
IGNORE_INDEX = 255   # VOC's "void" label on object borders


def read_json(path: Path) -> dict:
    if not path.is_file():
        raise MobileNetsError(f"{path}: no such file")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise MobileNetsError(f"{path}:{e.lineno}: malformed JSON ({e.msg}, column {e.colno})") from None
    except UnicodeDecodeError as e:
        raise MobileNetsError(f"{path}: not UTF-8 text ({e.reason})") from None


def read_rgb(path: Path) -> tv_tensors.Image:
    """Any PIL-readable image (palette, grey, CMYK, RGBA) as uint8 RGB."""
    with Image.open(path) as im:
        return tv_tensors.Image(v2.functional.pil_to_tensor(im.convert("RGB")))


def coco_files(root: str | Path, split: str) -> tuple[Path, Path]:
    """(annotation file, image folder) of `split` in a folder laid out as `data scenes` writes
    it and as COCO is distributed: annotations/instances_<split>.json and images/."""
    root = Path(root)
    ann = root / "annotations" / f"instances_{split}.json"
    if not ann.is_file():
        raise MobileNetsError(f"{root}: no annotations/instances_{split}.json; expected a COCO folder "
                              "with annotations/ and images/")
    return ann, root / "images"


class CocoDetection(Dataset):
    """Items are (tv_tensors.Image uint8, target) with target = {"boxes": BoundingBoxes xyxy,
    "labels": contiguous class indices 1..K (0 is background), "image_id", "orig_size"}.
    `classes` lists the names, background first; `category_ids[k]` is class k's COCO id."""

    def __init__(self, annotation_file: str | Path, image_dir: str | Path, transforms=None):
        from pycocotools.coco import COCO
        self.annotation_file, self.image_dir = Path(annotation_file), Path(image_dir)
        doc = read_json(self.annotation_file)
        if not isinstance(doc, dict) or not isinstance(doc.get("images"), list):
            raise MobileNetsError(f"{self.annotation_file}: not a COCO annotation file (no 'images' list)")
        doc.setdefault("annotations", [])
        doc.setdefault("categories", [])
        self.num_annotations = len(doc["annotations"]) if isinstance(doc["annotations"], list) else 0
        dropped = {"zero-area": 0, "outside the image": 0, "unknown category id": 0, "unknown image id": 0,
                   "malformed": 0}
        doc["annotations"] = _screen_annotations(self.annotation_file, doc, dropped)
        self.coco = COCO()
        self.coco.dataset = doc
        with contextlib.redirect_stdout(io.StringIO()):   # pycocotools prints progress
            self.coco.createIndex()
        cats = sorted(self.coco.cats.values(), key=lambda c: c["id"])
        self.category_ids = [0] + [c["id"] for c in cats]
        self.classes = ["background"] + [c["name"] for c in cats]
        label_of = {cid: k for k, cid in enumerate(self.category_ids) if k}
        self.transforms = transforms
        self.ids, self.targets = [], {}
        missing = []
        for image_id, info in sorted(self.coco.imgs.items()):
            if not _readable(self.image_dir / info["file_name"]):
                missing.append(info["file_name"])
                continue
            w, h = info["width"], info["height"]
            boxes, labels = [], []
            for ann in self.coco.imgToAnns.get(image_id, []):
                if ann.get("iscrowd"):   # crowd regions are ignored in training, as COCOeval ignores them
                    continue
                reason, box = _check_box(ann, w, h, label_of)
                if reason:
                    dropped[reason] += 1
                    continue
                boxes.append(box)
                labels.append(label_of[ann["category_id"]])
            self.ids.append(image_id)
            self.targets[image_id] = (torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                                      torch.tensor(labels, dtype=torch.int64))
        total = sum(dropped.values())
        if total:
            why = ", ".join(f"{n} {k}" for k, n in dropped.items() if n)
            warnings.warn(f"{self.annotation_file}: dropped {total} of {self.num_annotations} boxes ({why})",
                          stacklevel=2)
        if missing:
            warnings.warn(f"{self.annotation_file}: skipped {len(missing)} images whose files are "
                          f"missing or unreadable under {self.image_dir} (first: {missing[0]})", stacklevel=2)

    def __len__(self) -> int:
        return len(self.ids)

    def select(self, indices: list[int]) -> "CocoDetection":
        """The same data set restricted to the images at `indices` (COCO evaluation included)."""
        sub = copy.copy(self)
        sub.ids = [self.ids[i] for i in indices]
        return sub

    def __getitem__(self, index: int):
        image_id = self.ids[index]
        info = self.coco.imgs[image_id]
        image = read_rgb(self.image_dir / info["file_name"])
        h, w = image.shape[-2:]
        boxes, labels = self.targets[image_id]
        target = {"boxes": tv_tensors.BoundingBoxes(boxes.clone(), format="XYXY", canvas_size=(h, w)),
                  "labels": labels.clone(), "image_id": image_id, "orig_size": (h, w)}
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target


IMAGE_KEYS = ("id", "file_name", "width", "height")


def _screen_annotations(path: Path, doc: dict, dropped: dict) -> list[dict]:
    """One-line errors for image and category entries no reader could use; annotations that
    pycocotools could not index (not an object, no id / image_id) or that name no listed image
    are dropped and counted in `dropped`."""
    for key, needed in (("images", IMAGE_KEYS), ("categories", ("id", "name"))):
        if not isinstance(doc[key], list):
            raise MobileNetsError(f"{path}: '{key}' is not a list")
        for i, entry in enumerate(doc[key]):
            lacking = [k for k in needed if not isinstance(entry, dict) or k not in entry]
            if lacking:
                raise MobileNetsError(f"{path}: {key}[{i}] has no {lacking[0]!r}")
    if not isinstance(doc["annotations"], list):
        raise MobileNetsError(f"{path}: 'annotations' is not a list")
    image_ids = {img["id"] for img in doc["images"]}
    kept = []
    for ann in doc["annotations"]:
        if not isinstance(ann, dict) or "id" not in ann or "image_id" not in ann:
            dropped["malformed"] += 1
        elif ann["image_id"] not in image_ids:
            dropped["unknown image id"] += 1
        else:
            kept.append(ann)
    return kept


def _readable(path: Path) -> bool:
    """The file exists and its header is an image's (pixels are decoded when it is used)."""
    try:
        with Image.open(path):
            return True
    except (OSError, ValueError):
        return False


def _check_box(ann: dict, width: int, height: int, label_of: dict):
    """(reason it is dropped or None, xyxy box clipped to the image)."""
    if ann.get("category_id") not in label_of:
        return "unknown category id", None
    bbox = ann.get("bbox")
    if not (isinstance(bbox, list) and len(bbox) == 4 and all(isinstance(v, (int, float)) for v in bbox)):
        return "malformed", None
    x, y, w, h = bbox
    if w <= 0 or h <= 0:
        return "zero-area", None
    x1, y1, x2, y2 = max(x, 0), max(y, 0), min(x + w, width), min(y + h, height)
    if x2 <= x1 or y2 <= y1:
        return "outside the image", None
    return None, [x1, y1, x2, y2]


class VOCSegmentation(Dataset):
    """Items are (tv_tensors.Image uint8, tv_tensors.Mask int64 of class indices, 255 = void).
    Reads root/ImageSets/Segmentation/<split>.txt, JPEGImages/<name>.jpg and
    SegmentationClass/<name>.png; class names from root/classes.txt, else VOC's 21."""

    def __init__(self, root: str | Path, split: str = "train", transforms=None):
        self.root = Path(root)
        listing = self.root / "ImageSets" / "Segmentation" / f"{split}.txt"
        if not listing.is_file():
            raise MobileNetsError(f"{self.root}: no ImageSets/Segmentation/{split}.txt; expected a "
                                  "VOC folder with JPEGImages/, SegmentationClass/, ImageSets/")
        names_file = self.root / "classes.txt"
        self.classes = ([ln.strip() for ln in names_file.read_text().splitlines() if ln.strip()]
                        if names_file.is_file() else list(VOC_CLASSES))
        self.transforms = transforms
        self.items, problems = [], {"missing or unreadable files": [], "mask size differs from image": [],
                                    "mask is not an index image": []}
        beyond = []
        for name in listing.read_text().split():
            image = self.root / "JPEGImages" / f"{name}.jpg"
            mask = self.root / "SegmentationClass" / f"{name}.png"
            try:
                with Image.open(image) as a, Image.open(mask) as b:
                    if a.size != b.size:
                        problems["mask size differs from image"].append(f"{name} ({a.size} vs {b.size})")
                        continue
                    if b.mode not in ("P", "L"):
                        problems["mask is not an index image"].append(f"{name} (mode {b.mode})")
                        continue
                    if any(b.histogram()[len(self.classes):IGNORE_INDEX]):
                        beyond.append(name)
            except (OSError, ValueError):
                problems["missing or unreadable files"].append(name)
                continue
            self.items.append((image, mask))
        for why, names in problems.items():
            if names:
                warnings.warn(f"{listing}: skipped {len(names)} images, {why} (first: {names[0]})",
                              stacklevel=2)
        if beyond:
            warnings.warn(f"{listing}: {len(beyond)} masks hold class indices beyond the "
                          f"{len(self.classes)} classes (first: {beyond[0]}); those pixels are ignored "
                          f"like void ({IGNORE_INDEX})", stacklevel=2)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        image_path, mask_path = self.items[index]
        image = read_rgb(image_path)
        with Image.open(mask_path) as m:
            # Palette PNGs hold class indices; convert("L") would map them through the palette.
            mask = torch.frombuffer(bytearray(m.tobytes()), dtype=torch.uint8).reshape(m.size[1], m.size[0])
        mask = mask.long()
        mask[(mask >= len(self.classes)) & (mask != IGNORE_INDEX)] = IGNORE_INDEX
        mask = tv_tensors.Mask(mask)
        if self.transforms is not None:
            image, mask = self.transforms(image, mask)
        return image, mask

    def select(self, indices: list[int]) -> "VOCSegmentation":
        """The same data set restricted to the images at `indices`."""
        sub = copy.copy(self)
        sub.items = [self.items[i] for i in indices]
        return sub


def _normalize(mean, std) -> list:
    return [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]


def _geometry(size: int, train: bool) -> list:
    aug = [v2.RandomHorizontalFlip(),
           v2.RandomAffine(degrees=0, translate=(0.1, 0.1), scale=(0.75, 1.25))] if train else []
    return aug + [v2.Resize((size, size), antialias=True)]


def detection_transforms(size: int, train: bool, mean, std) -> v2.Compose:
    """Boxes follow every geometric step; those pushed out of the image are dropped."""
    photometric = [v2.ColorJitter(0.3, 0.3, 0.3)] if train else []
    return v2.Compose([*photometric, *_geometry(size, train), v2.ClampBoundingBoxes(),
                       v2.SanitizeBoundingBoxes(min_size=1), *_normalize(mean, std)])


def segmentation_transforms(size: int, train: bool, mean, std) -> v2.Compose:
    """Masks follow every geometric step with nearest-neighbour sampling."""
    photometric = [v2.ColorJitter(0.3, 0.3, 0.3)] if train else []
    return v2.Compose([*photometric, *_geometry(size, train), *_normalize(mean, std)])


def collate_detection(batch):
    images, targets = zip(*batch)
    return torch.stack([torch.as_tensor(i) for i in images]), list(targets)


def collate_segmentation(batch):
    images, masks = zip(*batch)
    return torch.stack([torch.as_tensor(i) for i in images]), torch.stack([torch.as_tensor(m) for m in masks])
