"""`verify_file`: what a model file says it is (kind, model, classes, resolution) and whether its
content still hashes to the checksum its metadata records (core/checksum.py), read without
running or even loading the model."""
from __future__ import annotations

import json
import os
from pathlib import Path

from ..core.checksum import flat_digest, zip_digest
from ..core.errors import MobileNetsError
from ..models.weights import read_metadata
from .metadata import METADATA_KEY

KINDS = {".safetensors": "safetensors weights", ".onnx": "ONNX", ".ts": "TorchScript",
         ".pt2": "torch.export", ".pte": "ExecuTorch", ".tflite": "LiteRT"}
ZIP_SUFFIXES = (".ts", ".pt2")
FORMAT_TAG = b'"format": "mobilenets/1"'
# How many '{' before the format tag are tried as the start of the metadata document.
_OPENINGS_TRIED = 64
_LONGEST_METADATA = 1 << 20   # bytes after the format tag (1000 class names take ~20 KB)


def embedded_metadata(data: bytes) -> dict | None:
    """The mobilenets metadata document stored verbatim inside a flat file (an ONNX string, an
    ExecuTorch constant, a TFLite buffer), found by its format tag; None if there is none."""
    tag = data.find(FORMAT_TAG)
    if tag < 0:
        return None
    decoder, start = json.JSONDecoder(), tag
    for _ in range(_OPENINGS_TRIED):
        start = data.rfind(b"{", 0, start)
        if start < 0:
            return None
        try:
            # Decoding only a window keeps this to the document, not the weights after it.
            window = data[start:tag + _LONGEST_METADATA]
            doc, _ = decoder.raw_decode(window.decode("utf-8", "replace"))
        except json.JSONDecodeError:
            continue
        if isinstance(doc, dict) and doc.get("format") == "mobilenets/1":
            return doc
    return None


def _metadata_and_digests(path: Path) -> tuple[dict | None, tuple[str, str] | None]:
    suffix = path.suffix.lower()
    if suffix in ZIP_SUFFIXES:
        recorded, actual, text = zip_digest(path, METADATA_KEY, f"{KINDS[suffix]} file")
        try:
            meta = json.loads(text) if text else None
        except (json.JSONDecodeError, UnicodeDecodeError):
            meta = None
        return meta, ((recorded, actual) if recorded else None)
    digests = flat_digest(path)
    if suffix == ".safetensors":
        return read_metadata(path) or None, digests
    return embedded_metadata(path.read_bytes()), digests


def verify_file(path: str | os.PathLike) -> dict:
    """{"file", "kind", "model", "task", "precision", "classes" (count), "first_classes",
    "resolution", "checksum": "ok" | "mismatch" | "none", "recorded", "actual", "ok"}; a file
    that cannot be read at all has "error" (one line) and ok False. A file without a recorded
    checksum (written before checksums) passes: loaders take it too."""
    path = Path(path)
    report = {"file": str(path), "kind": KINDS.get(path.suffix.lower(), "unknown")}
    try:
        if not path.is_file():
            raise MobileNetsError(f"{path}: no such file")
        if path.stat().st_size == 0:
            raise MobileNetsError(f"{path}: is empty (0 bytes)")
        if path.suffix.lower() not in KINDS:
            raise MobileNetsError(f"{path}: unknown model file type; allowed: "
                                  + ", ".join(sorted(KINDS)))
        meta, digests = _metadata_and_digests(path)
    except MobileNetsError as e:
        return {**report, "ok": False, "error": str(e).removeprefix(f"{path}: ")}
    meta = meta or {}
    classes = meta.get("classes") if isinstance(meta.get("classes"), list) else None
    pre = meta.get("preprocessing") if isinstance(meta.get("preprocessing"), dict) else {}
    report.update(model=meta.get("model"), task=meta.get("task", "classification"),
                  precision=meta.get("precision"),
                  classes=len(classes) if classes is not None else None,
                  first_classes=[str(c) for c in classes[:3]] if classes else [],
                  resolution=pre.get("resolution"))
    if digests is None:
        return {**report, "checksum": "none", "recorded": None, "actual": None, "ok": True}
    recorded, actual = digests
    return {**report, "checksum": "ok" if recorded == actual else "mismatch",
            "recorded": recorded, "actual": actual, "ok": recorded == actual}


def describe(report: dict) -> str:
    """One line for a `verify_file` report."""
    name = report["file"]
    if "error" in report:
        return f"{name}: error: {report['error']}"
    what = [report["kind"] + (f" {report['precision']}" if report.get("precision") else "")]
    if report.get("model"):
        what.append(report["model"] + ("" if report["task"] == "classification" else f" ({report['task']})"))
    if report.get("classes") is not None:
        more = ", …" if report["classes"] > len(report["first_classes"]) else ""
        what.append(f"{report['classes']} classes ({', '.join(report['first_classes'])}{more})")
    if report.get("resolution"):
        what.append(f"{report['resolution']} px")
    if report["checksum"] == "ok":
        result = f"checksum ok (sha256 {report['actual'][:16]}…)"
    elif report["checksum"] == "none":
        result = "no checksum recorded (written before checksums; its content cannot be checked)"
    else:
        result = (f"checksum MISMATCH: recorded sha256 {report['recorded']}, content sha256 "
                  f"{report['actual']}")
    return f"{name}: " + ", ".join(what) + "; " + result
