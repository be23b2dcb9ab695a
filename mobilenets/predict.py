"""`Predictor`: top-k classes from any saved form of a model (safetensors checkpoint, ONNX fp32 or
int8, torch.export .pt2, TorchScript), fed with the preprocessing recorded in the file."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from .backends import BACKENDS
from .errors import MobileNetsError
from .preprocess import transform


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
        backend = BACKENDS.get(self.path.suffix.lower())
        if backend is None:
            raise MobileNetsError(f"{self.path}: unknown model file type; allowed: "
                                  + ", ".join(sorted(BACKENDS)))
        from .task_inference import task_of
        task = task_of(self.path)
        self.topk = topk
        self.backend = None if task else backend(self.path, threads)
        self.meta = self.backend.meta if self.backend else {}
        task = task or self.meta.get("task")
        if task:
            raise MobileNetsError(f"{self.path}: a {task} model, not a classifier; use "
                                  "mobilenets.task_inference.predict_image (`mobilenets predict FILE IMAGE --out PNG`)")
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
        from PIL import Image, UnidentifiedImageError
        from .data import to_mode
        if not p.is_file():
            raise MobileNetsError(f"{p}: no such image file")
        if p.stat().st_size == 0:
            raise MobileNetsError(f"{p}: zero-byte file")
        try:
            with Image.open(p) as im:
                im.load()
                return to_mode(im, self.input_shape[0])
        except (OSError, UnidentifiedImageError, SyntaxError, ValueError):
            raise MobileNetsError(f"{p}: cannot be decoded as an image") from None

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
        probs = self.logits(images).float().softmax(1)
        k = min(topk or self.topk, probs.shape[1])
        p, idx = probs.topk(k, 1)
        return [[{"index": int(i), "label": self.classes[int(i)] if self.classes else str(int(i)),
                  "prob": round(float(q), 6)} for q, i in zip(pr, ix)]
                for pr, ix in zip(p, idx)]


    def predict_files(self, files, topk: int | None = None) -> list[tuple[str, list | str]]:
        """[(file, top-k or the reason it could not be read)] in input order."""
        results = []
        for f in files:
            try:
                results.append((str(f), self(str(f), topk)[0]))
            except MobileNetsError as e:
                results.append((str(f), str(e).removeprefix(f"{f}: ")))
        return results


def add_commands(sub) -> None:
    p = sub.add_parser("predict", help="top-k classes of images with any saved model form; boxes or "
                                        "masks drawn for a detector / segmenter")
    p.add_argument("model", help=".safetensors, .onnx (fp32/int8), .pt2 or TorchScript (.ts/.pt) file")
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--topk", type=int, default=5)
    p.add_argument("--json", action="store_true")
    p.add_argument("--out", default=None, help="detector / segmenter: the PNG drawn (one image) or a folder "
                                               "for IMAGE_pred.png files (default: the current folder)")
    p.add_argument("--min-score", type=float, default=0.3, help="detector: the lowest score shown")
    p.set_defaults(func=_cmd_predict)


def _cmd_predict(args) -> int:
    """One line per file, starting with its name; exit 0 if any file was predicted."""
    from .task_inference import cmd_predict, task_of
    if task_of(args.model):
        return cmd_predict(args)
    if args.out is not None:
        raise MobileNetsError(f"--out draws boxes or masks; {args.model} is not a detection or "
                              "segmentation weights file")
    if args.topk < 1:
        raise MobileNetsError(f"--topk {args.topk}: allowed: integer >= 1")
    results = Predictor(args.model, topk=args.topk).predict_files(args.images)
    if args.json:
        print(json.dumps([{"image": f, "top": r} if isinstance(r, list) else {"image": f, "error": r}
                          for f, r in results]))
    else:
        for file, top in results:
            print(f"{file}: error: {top}" if isinstance(top, str) else
                  f"{file}: " + ", ".join(f"{t['label']} {t['prob']:.3f}" for t in top))
    return 0 if any(isinstance(r, list) for _, r in results) else 1
