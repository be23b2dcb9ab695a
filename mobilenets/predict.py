"""Inference on image files with a trained model, and the `predict` verb.

`Predictor(path)` picks a backend by the file's format; each backend turns a batch of
preprocessed images into logits. Adding a format (ONNX, int8) means adding a backend class and
a line in `_BACKENDS`.
"""
from __future__ import annotations

from pathlib import Path

import torch

from .errors import MobileNetsError


class _TorchBackend:
    """A .safetensors file written by `mobilenets train` (or any mobilenets weights file)."""

    def __init__(self, path: Path):
        from .weights import load_model
        model, meta = load_model(path)
        self.model = model.eval().to(memory_format=torch.channels_last)
        self.meta = meta

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.contiguous(memory_format=torch.channels_last)).float()


_BACKENDS = {".safetensors": _TorchBackend}


class Predictor:
    """Load a trained model and its preprocessing; `predict(files, k)` gives top-k (class, prob)."""

    def __init__(self, path: str | Path):
        path = Path(path)
        backend = _BACKENDS.get(path.suffix.lower())
        if backend is None:
            raise MobileNetsError(f"{path}: unsupported model file; allowed: {', '.join(_BACKENDS)}")
        self.path = path
        self.backend = backend(path)
        meta = self.backend.meta
        pre = meta.get("preprocessing") or {}
        self.resolution = int(pre.get("resolution", 224))
        self.resize = int(pre.get("resize", self.resolution))
        self.mean = tuple(pre.get("mean", (0.485, 0.456, 0.406)))
        self.std = tuple(pre.get("std", (0.229, 0.224, 0.225)))
        self.in_chans = int(pre.get("in_chans", len(self.mean)))
        classes = meta.get("classes")
        n = meta.get("model_kwargs", {}).get("num_classes")
        self.classes = list(classes) if classes else [str(i) for i in range(n or 1000)]
        from torchvision.transforms import v2
        self.transform = v2.Compose([
            v2.Resize(self.resize, antialias=True), v2.CenterCrop(self.resolution), v2.ToImage(),
            v2.ToDtype(torch.float32, scale=True), v2.Normalize(self.mean, self.std)])

    def load_image(self, file: str | Path) -> torch.Tensor:
        """The preprocessed C×H×W tensor of one image file; MobileNetsError saying why it cannot."""
        from PIL import Image, UnidentifiedImageError
        from .data import to_mode
        file = Path(file)
        if not file.is_file():
            raise MobileNetsError("no such file")
        if file.stat().st_size == 0:
            raise MobileNetsError("zero-byte file")
        try:
            with Image.open(file) as im:
                img = to_mode(im, self.in_chans)
        except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as e:
            raise MobileNetsError(f"unreadable image ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
        return self.transform(img)

    def predict_tensor(self, x: torch.Tensor, k: int = 5) -> list[list[tuple[str, float]]]:
        probs = self.backend(x).softmax(1)
        top = probs.topk(min(k, probs.shape[1]), 1)
        return [[(self.classes[i], float(p)) for p, i in zip(ps.tolist(), idx.tolist())]
                for ps, idx in zip(top.values, top.indices)]

    def predict(self, files, k: int = 5, batch: int = 64) -> list[tuple[str, list | str]]:
        """[(file, [(class, prob), ...] or the reason it could not be read)] in input order."""
        results: list = [None] * len(files)
        ready = []
        for i, f in enumerate(files):
            try:
                ready.append((i, self.load_image(f)))
            except MobileNetsError as e:
                results[i] = (str(f), str(e))
        for start in range(0, len(ready), batch):
            chunk = ready[start:start + batch]
            preds = self.predict_tensor(torch.stack([t for _, t in chunk]), k)
            for (i, _), p in zip(chunk, preds):
                results[i] = (str(files[i]), p)
        return results


def add_commands(sub) -> None:
    p = sub.add_parser("predict", help="top-k classes of image files with a trained model")
    p.add_argument("checkpoint", help="a .safetensors file written by `mobilenets train`")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--topk", type=int, default=3)
    p.set_defaults(func=_cmd_predict)


def _cmd_predict(args) -> int:
    from .runtime import tune_allocator
    tune_allocator()
    if args.topk < 1:
        raise MobileNetsError(f"--topk {args.topk}: allowed: integer >= 1")
    predictor = Predictor(args.checkpoint)
    ok = 0
    for file, result in predictor.predict(args.files, args.topk):
        if isinstance(result, str):
            print(f"{file}: error: {result}")
        else:
            ok += 1
            print(f"{file}: " + "  ".join(f"{c} {p:.4f}" for c, p in result))
    return 0 if ok else 1
