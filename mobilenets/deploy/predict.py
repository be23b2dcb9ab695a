"""`Predictor`: top-k classes from any saved form of a model (safetensors checkpoint, ONNX fp32 or
int8, torch.export .pt2, TorchScript, ExecuTorch .pte fp32 or int8, LiteRT .tflite), fed with the
preprocessing recorded in the file."""
from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from PIL import Image

from .backends import BACKENDS, INPUT_PREPROCESSING
from .fuse import prepare_for_inference
from ..core.errors import MobileNetsError
from ..datasets.coco_voc import read_rgb
from ..datasets.preprocess import transform
from ..models.mobilenet import load_task_model
from ..train.metrics import draw_detections, draw_segmentation
from ..models.weights import check_metadata, task_of
from ..datasets.folders import to_mode

# What PIL raises for files that are not images, are cut short or forged (its decoders raise
# struct.error, IndexError or EOFError on some malformed headers), or declare more pixels than
# Image.MAX_IMAGE_PIXELS allows (DecompressionBombError, not an OSError).
UNREADABLE_IMAGE = (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error,
                    Image.DecompressionBombError)


class Predictor:
    """Predictor(path)(images) → per image, the top-k [{"index", "label", "prob"}] best first.

    `images`: a file path, a uint8 tensor / array (C×H×W or N×C×H×W, any size: resized as the
    model's preprocessing says), a float tensor already preprocessed to the model's input shape,
    or a list of paths / uint8 images.
    """

    def __init__(self, path: str | os.PathLike, topk: int = 5, threads: int | None = None):
        self.path = Path(path)
        if not self.path.is_file():
            raise MobileNetsError(f"{self.path}: no such file")
        if self.path.stat().st_size == 0:
            raise MobileNetsError(f"{self.path}: is empty (0 bytes)")
        backend = BACKENDS.get(self.path.suffix.lower())
        if backend is None:
            raise MobileNetsError(f"{self.path}: unknown model file type; allowed: "
                                  + ", ".join(sorted(BACKENDS)))
        task = task_of(self.path)
        self.topk = topk
        self.backend = None if task else backend(self.path, threads)
        self.meta = self.backend.meta if self.backend else {}
        task = task or self.meta.get("task")
        if task:
            raise MobileNetsError(f"{self.path}: a {task} model, not a classifier; use "
                                  "mobilenets.deploy.predict.predict_image (`mobilenets predict FILE IMAGE --out PNG`)")
        check_metadata(self.meta, self.path, outputs=getattr(self.backend, "num_outputs", None),
                       required=INPUT_PREPROCESSING)
        pre = self.meta["preprocessing"]
        self.input_shape = [int(pre["in_chans"]), int(pre["resolution"]), int(pre["resolution"])]
        self.classes = self.meta.get("classes")
        self.transform = transform(pre)

    # -- inputs --------------------------------------------------------------------------------
    def _decode(self, item) -> torch.Tensor:
        """One image as uint8 C×H×W, or a float batch passed through."""
        if isinstance(item, (str, os.PathLike)):
            item = self._open(Path(item))
        if hasattr(item, "convert") and hasattr(item, "size"):  # a PIL image
            item = np.array(item.convert("L" if self.input_shape[0] == 1 else "RGB"))
        t = torch.as_tensor(np.asarray(item)) if not isinstance(item, torch.Tensor) else item
        if t.ndim == 2:
            t = t.unsqueeze(0)
        elif t.ndim == 3 and t.shape[-1] in (1, 3, 4) and t.shape[0] not in (1, 3, 4):
            t = t.permute(2, 0, 1)  # H×W×C arrays from PIL / numpy
        return t

    def _open(self, p: Path):
        """An image file as a PIL image in the model's mode (CMYK, palette, alpha and 16-bit
        images converted as viewers show them); one-line error naming the file otherwise."""
        if not p.is_file():
            raise MobileNetsError(f"{p}: no such image file")
        if p.stat().st_size == 0:
            raise MobileNetsError(f"{p}: zero-byte file")
        try:
            with Image.open(p) as im:
                im.load()
                return to_mode(im, self.input_shape[0])
        except Image.DecompressionBombError as e:
            raise MobileNetsError(f"{p}: too many pixels to decode ({e})") from e
        except UNREADABLE_IMAGE as e:
            raise MobileNetsError(f"{p}: cannot be decoded as an image") from e

    def preprocess(self, images) -> torch.Tensor:
        if isinstance(images, (list, tuple)):
            parts = [self._decode(i) for i in images]
            batch = [self._to_batch(p) for p in parts]
            return torch.cat(batch)
        return self._to_batch(self._decode(images))

    def _to_batch(self, t: torch.Tensor) -> torch.Tensor:
        if t.ndim == 3:
            t = t.unsqueeze(0)
        if t.ndim != 4:
            raise MobileNetsError(f"images of shape {tuple(t.shape)}; allowed: C×H×W or N×C×H×W")
        if t.dtype == torch.uint8:
            try:
                return self.transform(t)
            except ValueError as e:
                raise MobileNetsError(f"{self.path}: {e}") from None
        if list(t.shape[1:]) != self.input_shape:
            raise MobileNetsError(f"{self.path}: takes preprocessed inputs of shape "
                                  f"{self.input_shape}, got {list(t.shape[1:])} (pass uint8 images "
                                  "to have them resized)")
        return t.float()

    def logits(self, images) -> torch.Tensor:
        return self.backend(self.preprocess(images))

    def __call__(self, images, topk: int | None = None) -> list[list[dict]]:
        return self._top(self.logits(images), topk)

    def _top(self, logits: torch.Tensor, topk: int | None) -> list[list[dict]]:
        probs = logits.float().softmax(1)
        if self.classes and len(self.classes) != probs.shape[1]:
            raise MobileNetsError(f"{self.path}: metadata classes has {len(self.classes)} names for "
                                  f"a model with {probs.shape[1]} outputs; allowed: exactly "
                                  f"{probs.shape[1]} names")
        k = min(topk or self.topk, probs.shape[1])
        p, idx = probs.topk(k, 1)
        return [[{"index": int(i), "label": self.classes[int(i)] if self.classes else str(int(i)),
                  "prob": round(float(q), 6)} for q, i in zip(pr, ix)]
                for pr, ix in zip(p, idx)]

    def predict_each(self, files, topk: int | None = None) -> Iterator[tuple[str, list | str]]:
        """(file, top-k or the reason it could not be read) for each file in input order, each
        as soon as it is predicted. A file that cannot be read is reported and skipped; an
        error of the model itself ends the iteration."""
        for f in files:
            try:
                x = self.preprocess(str(f))
            except MobileNetsError as e:
                yield str(f), str(e).removeprefix(f"{f}: ")
                continue
            yield str(f), self._top(self.backend(x), topk)[0]

    def predict_files(self, files, topk: int | None = None) -> list[tuple[str, list | str]]:
        """[(file, top-k or the reason it could not be read)] in input order."""
        return list(self.predict_each(files, topk))


@torch.no_grad()
def predict_image(path, image_file, out_png, min_score: float = 0.3) -> dict:
    """Run the weights file on one image (resized to its resolution); draw the result over the
    image at its own size as PNG. Returns the detections (boxes in the image's own pixels) or
    the pixel count of each class present."""
    import torch.nn.functional as F
    from torchvision.transforms import v2
    model, meta = load_task_model(path)
    model = prepare_for_inference(model, channels_last=False)
    pre = meta["preprocessing"]
    try:
        image = read_rgb(Path(image_file))
    except UNREADABLE_IMAGE as e:
        raise MobileNetsError(f"{image_file}: not a readable image ({e})") from e
    h, w = image.shape[-2:]
    res = pre["resolution"]
    x = v2.Compose([v2.Resize((res, res), antialias=True), v2.ToDtype(torch.float32, scale=True),
                    v2.Normalize(pre["mean"], pre["std"])])(image)[None]
    picture = image.as_subclass(torch.Tensor)
    if meta["task"] == "detection":
        det = model.detect(x)[0]
        keep = det["scores"] >= min_score
        det = {"boxes": det["boxes"][keep] * torch.tensor([w / res, h / res] * 2),
               "scores": det["scores"][keep], "labels": det["labels"][keep]}
        draw_detections(picture, det, meta["classes"], out_png, min_score=min_score)
        return {"boxes": det["boxes"].tolist(), "labels": [meta["classes"][k] for k in det["labels"].tolist()],
                "scores": det["scores"].tolist()}
    logits = F.interpolate(model(x), size=(h, w), mode="bilinear", align_corners=False)
    pred = logits.argmax(1)[0]
    draw_segmentation(picture, pred, out_png, len(meta["classes"]))
    counts = torch.bincount(pred.flatten(), minlength=len(meta["classes"]))
    return {"pixels": {meta["classes"][k]: int(n) for k, n in enumerate(counts.tolist()) if n}}


