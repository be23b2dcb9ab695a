"""`Predictor`: top-k classes from any saved form of a model (safetensors checkpoint, ONNX fp32 or
int8, torch.export .pt2, TorchScript), fed with the preprocessing recorded in the file."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from .errors import MobileNetsError
from .export import (INPUT_NAME, _parse_meta, export_metadata, load_pt2, load_torchscript,
                     onnx_metadata, ort_session)
from .preprocess import transform

KINDS = {".safetensors": "safetensors", ".onnx": "onnx", ".pt2": "pt2", ".ts": "torchscript",
         ".pt": "torchscript", ".torchscript": "torchscript"}


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
        self.kind = KINDS.get(self.path.suffix.lower())
        if self.kind is None:
            raise MobileNetsError(f"{self.path}: unknown model file type; allowed: "
                                  + ", ".join(sorted(KINDS)))
        self.topk = topk
        self._run = getattr(self, f"_load_{self.kind}")(threads)
        pre = self.meta["preprocessing"]
        self.input_shape = [int(pre["in_chans"]), int(pre["resolution"]), int(pre["resolution"])]
        self.classes = self.meta.get("classes")
        self.transform = transform(pre)

    # -- loading: each returns a function from a float batch to logits -------------------------
    def _load_safetensors(self, threads):
        from .fuse import prepare_for_inference
        from .weights import load_model
        model, meta = load_model(self.path)
        self.meta = export_metadata(model, meta)
        model = prepare_for_inference(model)
        return lambda x: model(x.contiguous(memory_format=torch.channels_last))

    def _load_onnx(self, threads):
        self.meta = onnx_metadata(self.path)
        sess = ort_session(self.path, threads)
        inputs = sess.get_inputs()
        shape = list(inputs[0].shape[1:]) if len(inputs) == 1 else None
        if inputs[0].name != INPUT_NAME or shape != self.meta["input_shape"]:
            raise MobileNetsError(f"{self.path}: its graph takes {[i.shape for i in inputs]}, but its "
                                  f"metadata describes {self.meta['model']} on {self.meta['input_shape']}")
        return lambda x: torch.from_numpy(sess.run(None, {INPUT_NAME: x.numpy()})[0])

    def _load_pt2(self, threads):
        module, text = load_pt2(self.path)
        self.meta = _parse_meta(text, self.path)
        return lambda x: module(x.contiguous(memory_format=torch.channels_last))

    def _load_torchscript(self, threads):
        module, text = load_torchscript(self.path)
        self.meta = _parse_meta(text, self.path)
        return module

    # -- inputs --------------------------------------------------------------------------------
    def _decode(self, item) -> torch.Tensor:
        """One image as uint8 C×H×W, or a float batch passed through."""
        if isinstance(item, (str, os.PathLike)):
            from torchvision.io import ImageReadMode, decode_image, read_file
            p = Path(item)
            if not p.is_file():
                raise MobileNetsError(f"{p}: no such image file")
            mode = ImageReadMode.GRAY if self.input_shape[0] == 1 else ImageReadMode.RGB
            try:
                return decode_image(read_file(str(p)), mode=mode)
            except RuntimeError:
                raise MobileNetsError(f"{p}: cannot be decoded as an image (JPEG, PNG, GIF, WebP)") from None
        if hasattr(item, "convert") and hasattr(item, "size"):  # a PIL image
            item = np.asarray(item.convert("L" if self.input_shape[0] == 1 else "RGB"))
        t = torch.as_tensor(np.asarray(item)) if not isinstance(item, torch.Tensor) else item
        if t.ndim == 2:
            t = t.unsqueeze(0)
        elif t.ndim == 3 and t.shape[-1] in (1, 3, 4) and t.shape[0] not in (1, 3, 4):
            t = t.permute(2, 0, 1)  # H×W×C arrays from PIL / numpy
        return t

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
        with torch.inference_mode():
            return self._run(self.preprocess(images))

    def __call__(self, images, topk: int | None = None) -> list[list[dict]]:
        probs = self.logits(images).float().softmax(1)
        k = min(topk or self.topk, probs.shape[1])
        p, idx = probs.topk(k, 1)
        return [[{"index": int(i), "label": self.classes[int(i)] if self.classes else str(int(i)),
                  "prob": round(float(q), 6)} for q, i in zip(pr, ix)]
                for pr, ix in zip(p, idx)]


def add_commands(sub) -> None:
    p = sub.add_parser("predict", help="top-k classes of images with any saved model form")
    p.add_argument("model", help=".safetensors, .onnx (fp32/int8), .pt2 or TorchScript (.ts/.pt) file")
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--topk", type=int, default=5)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_predict)


def _cmd_predict(args) -> int:
    predictor = Predictor(args.model, topk=args.topk)
    results = predictor(list(args.images))
    if args.json:
        print(json.dumps([{"image": i, "top": r} for i, r in zip(args.images, results)]))
        return 0
    for image, top in zip(args.images, results):
        print(f"{image}: " + ", ".join(f"{t['label']} {t['prob']:.3f}" for t in top))
    return 0
