"""LiteRT (.tflite, fp32) files and their runtime.

Export: `litert_torch.convert` at batch 1 (its converter rejects a dynamic batch, see
docs/deploy.md); the runner feeds larger batches image by image. The mobilenets metadata is a
`mobilenets.json` entry of the flatbuffer's metadata table, where TFLite tools keep descriptions.
"""
from __future__ import annotations

import copy
import importlib
import json
import struct
from pathlib import Path

import torch
from torch import nn

from ..core.checksum import check_flat, seal_file, with_placeholder
from ..core.errors import MobileNetsError
from .metadata import METADATA_KEY, parse_meta
from .mobile import first_line, require


def write_tflite(fused: nn.Module, tmp: Path, info: dict, x: torch.Tensor) -> None:
    """Write the fp32 .tflite (batch 1) of an inference-form model to `tmp`."""
    litert_torch = require("litert_torch", "LiteRT export")
    schema = require("ai_edge_litert.schema_py_generated", "LiteRT export")
    import flatbuffers
    import numpy as np
    importlib.import_module("litert_torch.progress").console.quiet = True   # progress lines on stdout
    module = copy.deepcopy(fused).to(memory_format=torch.contiguous_format).eval()
    converted = litert_torch.convert(module, (x[:1],))
    # Append the metadata to the flatbuffer's metadata table (name → buffer), where TFLite tools
    # keep descriptions; the interpreter ignores entries it does not know.
    tree = schema.ModelT.InitFromPackedBuf(converted.model_content(), 0)
    if any(getattr(b, "offset", 0) > 1 for b in tree.buffers):
        raise MobileNetsError(f"{tmp}: the converter stored weights outside the flatbuffer; "
                              "cannot add metadata")
    buf = schema.BufferT()
    buf.data = np.frombuffer(json.dumps(with_placeholder({**info, "batch": 1})).encode(), np.uint8)
    tree.buffers.append(buf)
    entry = schema.MetadataT()
    entry.name, entry.buffer = METADATA_KEY, len(tree.buffers) - 1
    tree.metadata = list(tree.metadata or []) + [entry]
    builder = flatbuffers.Builder(1 << 20)
    builder.Finish(tree.Pack(builder), file_identifier=b"TFL3")
    Path(tmp).write_bytes(bytes(builder.Output()))
    seal_file(tmp)


def tflite_metadata(path) -> dict:
    """The mobilenets metadata of a .tflite file. The whole flatbuffer is unpacked first, so a
    file that is not TFLite or is cut short gives a one-line error here rather than reaching the
    interpreter's C++ parser."""
    schema = require("ai_edge_litert.schema_py_generated", "Reading a .tflite file")
    import numpy as np
    data = Path(path).read_bytes()
    if not data:
        raise MobileNetsError(f"{path}: is empty (0 bytes)")
    if len(data) < 8 or data[4:8] != b"TFL3":
        raise MobileNetsError(f"{path}: not a TFLite flatbuffer (no TFL3 identifier)")
    text = None
    try:
        tree = schema.ModelT.InitFromPackedBuf(data, 0)
        for entry in tree.metadata or []:
            name = entry.name.decode() if isinstance(entry.name, bytes) else entry.name
            if name == METADATA_KEY:
                text = np.asarray(tree.buffers[entry.buffer].data, np.uint8).tobytes()
                break
    except (IndexError, struct.error, AttributeError, ValueError, TypeError, UnicodeDecodeError) as e:
        raise MobileNetsError(f"{path}: not a readable TFLite file ({first_line(e)})") from e
    meta = parse_meta(text, path)
    check_flat(path)   # before the interpreter reads it
    return meta


class TFLiteBackend:
    """A .tflite file from `mobilenets export --format tflite`, on the LiteRT interpreter (its
    XNNPACK delegate) with `threads` threads. The file takes one image: resizing its input fails
    in the XNNPACK delegate for V3-Small ("failed to reshape runtime"), so batches run image by
    image, as a phone would run them."""

    def __init__(self, path: Path, threads: int | None = None):
        interpreter = require("ai_edge_litert.interpreter", f"{path}: running a LiteRT model")
        self.meta = tflite_metadata(path)
        try:
            self.interpreter = interpreter.Interpreter(model_path=str(path),
                                                       num_threads=threads or torch.get_num_threads())
            self.interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as e:
            raise MobileNetsError(f"{path}: not a loadable LiteRT model ({first_line(e)})") from e
        self.input = self.interpreter.get_input_details()[0]["index"]
        self.output = self.interpreter.get_output_details()[0]["index"]

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        it, outs = self.interpreter, []
        for image in x.float().contiguous().numpy():
            it.set_tensor(self.input, image[None])
            it.invoke()
            outs.append(torch.from_numpy(it.get_tensor(self.output).copy()))
        return torch.cat(outs)

    __call__ = logits
