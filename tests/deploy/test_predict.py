import hashlib
import json
import os
import pickle
import time
import zipfile

import pytest
import torch
from torchvision.io import write_png
from PIL import Image

from mobilenets.datasets.fashion_mnist import FMNIST_CLASSES, load_fashion_mnist
from mobilenets.train import DEFAULTS, load_recipe, train

from deploy_models import (CORRUPTIONS, PRE, corrupted, fmnist_checkpoint, fmnist_test_images,
                           recorded_checksum)
from mobilenets import MobileNetsError
from mobilenets.datasets.calibration import FASHION_MNIST_CLASSES, calibration_set, preprocessed
from mobilenets.cli import main
from mobilenets.deploy.export import export
from mobilenets.deploy.predict import Predictor
from mobilenets.deploy.quantize import quantize_onnx

# Every file here is a model with batch-norm statistics from Fashion-MNIST, or trained on it.
pytestmark = [pytest.mark.needs_fmnist, pytest.mark.slow]   # the files take a minute


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("pred")
    model = fmnist_checkpoint(d / "v2.safetensors")
    paths = {"safetensors": d / "v2.safetensors"}
    for fmt, suffix in (("onnx", ".onnx"), ("torchscript", ".ts"), ("pt2", ".pt2")):
        paths[fmt] = d / f"v2{suffix}"
        export(model, paths[fmt], fmt, {"preprocessing": PRE, "classes": FASHION_MNIST_CLASSES})
    paths["int8"] = d / "v2_int8.onnx"
    quantize_onnx(paths["onnx"], paths["int8"], calibration_set("fashion-mnist", PRE, 64))
    return d, model, paths


def test_every_format_predicts_like_the_model(files):
    d, model, paths = files
    # 128 images: on 32 one image is 3 points of agreement, as much as int8's margin below
    images, _ = fmnist_test_images(128)
    x = preprocessed(images, PRE)
    assert x.shape == (128, 1, 32, 32) and abs(x.mean().item() - (images.float().mean() / 255 - 0.286) / 0.353) < 0.02
    with torch.inference_mode():
        ref = model(x)
    ref_top = ref.argmax(1)
    # int8's yardstick is the untrained model's own sensitivity: its top-1 must agree with fp32
    # about as often as fp32 agrees with itself under input noise of std 0.02 (two uint8 steps).
    g = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        noisy_top = model(x + 0.02 * torch.randn(x.shape, generator=g)).argmax(1)
    int8_floor = (noisy_top == ref_top).float().mean().item() - 0.1
    for kind, path in paths.items():
        p = Predictor(path, topk=3)
        out = p(images)
        assert len(out) == 128 and len(out[0]) == 3
        assert out[0][0]["label"] in p.classes and out[0][0]["prob"] >= out[0][1]["prob"]
        top = torch.tensor([o[0]["index"] for o in out])
        agree = (top == ref_top).float().mean().item()
        assert agree >= (int8_floor if kind == "int8" else 1.0), (kind, agree, int8_floor)


def test_image_files_and_cli(files, tmp_path, capsys):
    d, model, paths = files
    images, _ = fmnist_test_images(2)
    for i, img in enumerate(images):
        write_png(img, str(tmp_path / f"{i}.png"))
    # A colour image for a gray model is converted, not refused.
    write_png(images[0].expand(3, -1, -1).contiguous(), str(tmp_path / "rgb.png"))
    p = Predictor(paths["int8"])
    by_file = p([str(tmp_path / "0.png"), str(tmp_path / "rgb.png")])
    assert by_file[0][0]["index"] == by_file[1][0]["index"] == p(images[0])[0][0]["index"]
    assert main(["predict", str(paths["pt2"]), str(tmp_path / "1.png"), "--topk", "2"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{tmp_path / '1.png'}: ") and out.count(",") == 1


def test_bad_inputs_are_one_line_errors(files, tmp_path):
    d, model, paths = files
    p = Predictor(paths["onnx"])
    garbage = tmp_path / "broken.png"
    garbage.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(MobileNetsError, match=r"broken.png: cannot be decoded as an image"):
        p(str(garbage))
    with pytest.raises(MobileNetsError, match=r"v2.onnx: takes preprocessed inputs of shape \[1, 32, 32\], got \[1, 28, 28\]"):
        p(torch.zeros(1, 1, 28, 28))
    with pytest.raises(MobileNetsError, match="missing.png: no such image file"):
        p(str(tmp_path / "missing.png"))
    with pytest.raises(MobileNetsError, match="model.bin: unknown model file type"):
        (tmp_path / "model.bin").write_bytes(b"x")
        Predictor(tmp_path / "model.bin")


def test_onnx_of_another_model_is_refused(files, tmp_path):
    """An ONNX file whose graph does not take what its metadata says (e.g. another model's
    metadata pasted on) is refused when loaded, naming the file."""
    import json
    import onnx
    d, _, paths = files
    proto = onnx.load(str(paths["onnx"]))
    meta = json.loads(proto.metadata_props[0].value)
    meta.pop("checksum")   # a hand-edited file, like one written before checksums, records none
    meta["input_shape"], meta["model"] = [3, 224, 224], "mobilenet_v3_large"
    proto.metadata_props[0].value = json.dumps(meta)
    onnx.save(proto, str(tmp_path / "mixed.onnx"))
    with pytest.raises(MobileNetsError, match=r"mixed.onnx: its graph takes .*mobilenet_v3_large on \[3, 224, 224\]"):
        Predictor(tmp_path / "mixed.onnx")


def test_bench_runs_an_int8_file(files):
    from mobilenets.deploy.bench import run_bench
    _, _, paths = files
    rows, machine = run_bench(str(paths["int8"]), batches=(1, 2), repeats=3, log=None)
    assert [(r["backend"], r["precision"], r["batch"]) for r in rows] == [
        ("onnxruntime", "int8", 1), ("onnxruntime", "int8", 2)]
    assert machine["input_shape"] == [1, 32, 32]


# A checkpoint written by the trainer: what `mobilenets predict` is for.
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("pred")
    cfg = {**DEFAULTS, **load_recipe("fashion-mnist"), "recipe": "fashion-mnist", "limit_train": 128,
           "limit_val": 64, "batch_size": 32, "epochs": 1, "lr": 0.03}
    train(cfg, out, progress=False)
    x, y = load_fashion_mnist(download=False)["test"]
    files = []
    for i in range(4):
        f = out / f"test{i}.png"
        Image.fromarray(x[i, 0].numpy(), "L").save(f)
        files.append(f)
    return out / "best.safetensors", files, x[:4], y[:4]


def test_predictor_matches_the_training_preprocessing(trained):
    ckpt, files, x, _ = trained
    p = Predictor(ckpt)
    assert p.classes == FMNIST_CLASSES and p.input_shape == [1, 28, 28]
    # PNG → PIL → transforms must give exactly the tensor the trainer evaluated on.
    from_files = p.preprocess([str(f) for f in files])
    from_tensor = (x.float() / 255 - 0.2860) / 0.3530
    assert torch.allclose(from_files, from_tensor, atol=1e-6)
    results = p([str(f) for f in files], topk=3)
    logits = p.backend(from_tensor)
    for top, row in zip(results, logits.softmax(1)):
        assert [t["label"] for t in top] == [FMNIST_CLASSES[i] for i in row.topk(3).indices.tolist()]
        probs = [t["prob"] for t in top]
        assert probs == sorted(probs, reverse=True) and abs(probs[0] - row.max().item()) < 1e-6


def test_predict_cli_one_line_per_file(trained, tmp_path, capsys):
    ckpt, files, _, _ = trained
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    rc = main(["predict", str(ckpt), str(files[0]), str(broken), str(tmp_path / "absent.jpg"), "--topk", "2"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert rc == 0 and len(lines) == 3
    assert lines[0].startswith(f"{files[0]}: ") and lines[0].count(", ") == 1
    assert lines[1] == f"{broken}: error: cannot be decoded as an image"
    assert lines[2] == f"{tmp_path / 'absent.jpg'}: error: no such image file"
    assert main(["predict", str(ckpt), str(broken)]) == 1


# -- hostile inputs ----------------------------------------------------------------------------

def forge_export(src, dst, **preprocessing_or_classes):
    """A copy of a TorchScript export whose mobilenets.json has the given entries changed."""
    import json
    extra = {"mobilenets.json": ""}
    module = torch.jit.load(str(src), _extra_files=extra)
    meta = json.loads(extra["mobilenets.json"])
    meta.pop("checksum")   # a hand-edited file, like one written before checksums, records none
    for key, value in preprocessing_or_classes.items():
        if key == "classes":
            meta["classes"] = value
        else:
            meta["preprocessing"][key] = value
    torch.jit.save(module, str(dst), _extra_files={"mobilenets.json": json.dumps(meta)})
    return dst


def test_forged_export_metadata_is_refused(files, tmp_path):
    _, _, paths = files
    images, _ = fmnist_test_images(1)
    huge = forge_export(paths["torchscript"], tmp_path / "huge.ts", resolution=10**7)
    with pytest.raises(MobileNetsError, match=r"huge.ts: metadata preprocessing.resolution=10000000 "
                                              r"is refused; allowed: an integer in \[1, 4096\]"):
        Predictor(huge)
    odd = forge_export(paths["torchscript"], tmp_path / "odd.ts", interpolation="lanczos")
    with pytest.raises(MobileNetsError, match="odd.ts: metadata preprocessing.interpolation='lanczos'"):
        Predictor(odd)
    # TorchScript cannot say how many outputs it has without running: the first batch tells.
    short = forge_export(paths["torchscript"], tmp_path / "short.ts", classes=["a", "b"])
    with pytest.raises(MobileNetsError, match=r"short.ts: metadata classes has 2 names for a model "
                                              r"with 10 outputs; allowed: exactly 10 names"):
        Predictor(short)(images)


def test_onnx_with_fewer_classes_than_outputs_is_refused_on_load(files, tmp_path):
    import json
    import onnx
    _, _, paths = files
    proto = onnx.load(str(paths["onnx"]))
    meta = json.loads(proto.metadata_props[0].value)
    meta.pop("checksum")   # a hand-edited file records none
    meta["classes"] = meta["classes"][:3]
    proto.metadata_props[0].value = json.dumps(meta)
    onnx.save(proto, str(tmp_path / "short.onnx"))
    with pytest.raises(MobileNetsError, match="short.onnx: metadata classes has 3 names for a model "
                                              "with 10 outputs"):
        Predictor(tmp_path / "short.onnx")


def bomb_png(path, side=30000):
    """A PNG whose header declares side × side pixels; PIL refuses it from the header alone,
    as it would a real bomb (~side² bytes of zeros compressed to a few hundred kB)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)   # 8-bit grey
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                     + chunk(b"IDAT", zlib.compress(b"\0" * (side + 1))) + chunk(b"IEND", b""))
    return path


def test_decompression_bomb_is_one_file_error(files, tmp_path, capsys):
    _, _, paths = files
    images, _ = fmnist_test_images(2)
    good = [tmp_path / "0.png", tmp_path / "1.png"]
    for img, f in zip(images, good):
        write_png(img, str(f))
    bomb = bomb_png(tmp_path / "bomb.png")
    assert main(["predict", str(paths["onnx"]), str(good[0]), str(bomb), str(good[1])]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3
    assert lines[0].startswith(f"{good[0]}: ") and lines[2].startswith(f"{good[1]}: ")
    # PIL's message names the declared size: 30000² pixels
    assert lines[1].startswith(f"{bomb}: error: too many pixels to decode (Image size ({30000 ** 2} ")
    with pytest.raises(MobileNetsError, match="bomb.png: too many pixels"):
        Predictor(paths["onnx"])(str(bomb))


def test_predict_prints_each_file_as_it_is_done(files, tmp_path, capsys, monkeypatch):
    _, _, paths = files
    images, _ = fmnist_test_images(2)
    for i, img in enumerate(images):
        write_png(img, str(tmp_path / f"{i}.png"))
    top, calls = Predictor._top, []

    def fails_second(self, logits, topk):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("the second forward pass failed")
        return top(self, logits, topk)
    monkeypatch.setattr(Predictor, "_top", fails_second)
    with pytest.raises(RuntimeError, match="second forward"):
        main(["predict", str(paths["onnx"]), str(tmp_path / "0.png"), str(tmp_path / "1.png")])
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{tmp_path / '0.png'}: ")


def test_pickle_named_safetensors_is_refused_in_one_line(tmp_path, capsys):
    import os
    marker = tmp_path / "code-ran"

    class RunsCode:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))
    evil = tmp_path / "model.safetensors"
    torch.save({"payload": RunsCode()}, evil)
    assert main(["predict", str(evil), str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith(f"mobilenets: error: {evil}: refused to unpickle: it would import ")
    assert not marker.exists()


def onnx_with_external_tensor(path, location):
    """A MatMul graph whose weight is read from `location` (external data)."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    w = numpy_helper.from_array(np.ones((2, 2), np.float32), "w")
    w.ClearField("raw_data")
    w.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", "16")):
        entry = w.external_data.add()
        entry.key, entry.value = key, value
    graph = helper.make_graph([helper.make_node("MatMul", ["images", "w"], ["logits"])], "g",
                              [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 2])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 2])], [w])
    onnx.save(helper.make_model(graph), str(path))
    return path


@pytest.mark.parametrize("where", ["../secret.bin", "absolute"])
def test_onnx_external_data_outside_its_folder_is_refused(tmp_path, where):
    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"\0" * 16)
    (tmp_path / "models").mkdir()
    location = str(secret) if where == "absolute" else where
    path = onnx_with_external_tensor(tmp_path / "models" / "m.onnx", location)
    with pytest.raises(MobileNetsError) as e:
        Predictor(path)
    assert str(e.value) == (f"{path}: tensor 'w' reads external data from {location!r}; allowed: "
                            f"files inside {(tmp_path / 'models').resolve()}")


def test_onnx_external_data_inside_its_folder_still_loads(files, tmp_path):
    import onnx
    _, _, paths = files
    import json
    proto = onnx.load(str(paths["onnx"]))
    # Re-saved by onnx itself the bytes change, so the file keeps its metadata but not the
    # checksum that covered the old bytes: a file from another tool, as a user would make it.
    for prop in proto.metadata_props:
        if prop.key == "mobilenets.json":
            meta = json.loads(prop.value)
            meta.pop("checksum", None)
            prop.value = json.dumps(meta)
    (tmp_path / "ext").mkdir()
    onnx.save(proto, str(tmp_path / "ext" / "v2.onnx"), save_as_external_data=True,
              all_tensors_to_one_file=True, location="v2.onnx.data", size_threshold=1024)
    assert (tmp_path / "ext" / "v2.onnx.data").stat().st_size > 0
    images, _ = fmnist_test_images(4)
    got = Predictor(tmp_path / "ext" / "v2.onnx")(images)
    want = Predictor(paths["onnx"])(images)
    assert [r[0]["index"] for r in got] == [r[0]["index"] for r in want]


def test_training_checkpoint_points_to_the_best_weights(trained, capsys):
    ckpt, files, _, _ = trained
    last = ckpt.parent / "last.pt"
    with pytest.raises(MobileNetsError) as e:
        Predictor(last)
    msg = str(e.value)
    assert msg.startswith(f"{last}: a training checkpoint (mobilenets-train/1") and str(ckpt) in msg
    assert main(["predict", str(last), str(files[0])]) == 2
    assert "a training checkpoint" in capsys.readouterr().err


def test_checkpoint_with_part_of_its_preprocessing(tmp_path, one_thread):
    """A file that records only some preprocessing keys has the rest from the model's defaults
    (3 input channels here) instead of failing on the missing key."""
    import mobilenets
    from mobilenets.models.weights import save_weights
    torch.manual_seed(0)
    model = mobilenets.create_model("mobilenet_v2", width_mult=0.35, num_classes=4).eval()
    model.classifier.reset_parameters()   # logits that differ, not N(0, 0.01) noise
    path = tmp_path / "partial.safetensors"
    save_weights(path, model, {"preprocessing": {"resolution": 64, "mean": [0.5] * 3, "std": [0.5] * 3}})
    p = Predictor(path, topk=1)
    assert p.input_shape == [3, 64, 64]
    image = torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8,
                          generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = model(((image.float() / 255 - 0.5) / 0.5)[None])
    assert torch.allclose(p.logits(image), want, rtol=1e-4, atol=1e-4)


# -- checksums and damaged files -------------------------------------------------------------
@pytest.mark.parametrize("where", CORRUPTIONS)
def test_flipped_bytes_are_refused_by_every_loader_and_verify(files, tmp_path, capsys, where):
    _, _, paths = files
    images, _ = fmnist_test_images(2)
    bad = {kind: corrupted(p, tmp_path / f"bad_{p.name}", where) for kind, p in paths.items()}
    for kind, path in bad.items():
        with pytest.raises(MobileNetsError) as e:
            Predictor(path)(images)
        message = str(e.value)
        assert message.startswith(f"{path}: ") and "\n" not in message, message
        if where != "header":   # the header may already fail the format's own parser
            assert "checksum mismatch" in message and recorded_checksum(paths[kind]) in message
    assert main(["verify", *map(str, paths.values()), "--json"]) == 0
    assert all(r["checksum"] == "ok" for r in json.loads(capsys.readouterr().out))
    assert main(["verify", *map(str, bad.values())]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(bad) and not any("checksum ok" in line for line in lines)


def test_verify_reports_what_the_file_is(files, capsys):
    _, _, paths = files
    assert main(["verify", str(paths["int8"])]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"{paths['int8']}: ONNX int8, mobilenet_v2, 10 classes (T-shirt/top, "
                           "Trouser, Pullover, …), 32 px; checksum ok (sha256 ")
    # the recipe for a flat file: every byte, the recorded digits read as zeros
    data = paths["int8"].read_bytes()
    digest = recorded_checksum(paths["int8"])
    assert hashlib.sha256(data.replace(digest.encode(), b"0" * 64)).hexdigest() == digest


@pytest.mark.parametrize("name", ["empty", "truncated", "random", "pickle", "other_zip"])
def test_damaged_pt2_is_one_line_without_log(files, tmp_path, capsys, name):
    _, _, paths = files
    data = paths["pt2"].read_bytes()
    blob = {"empty": b"", "truncated": data[:len(data) // 2], "random": os.urandom(4096),
            "pickle": pickle.dumps({"weights": [1.0, 2.0]})}.get(name)
    path = tmp_path / f"{name}.pt2"
    if blob is None:
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("archive/models/model.json", "{}")
    else:
        path.write_bytes(blob)
    image = tmp_path / "i.png"
    Image.new("L", (28, 28)).save(image)
    with pytest.raises(MobileNetsError, match=rf"{name}.pt2: (is empty|not a (readable )?torch.export file)"):
        Predictor(path)
    capsys.readouterr()
    assert main(["predict", str(path), str(image)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"mobilenets: error: {path}: ") and err.count("\n") == 1, err


def test_empty_model_file_says_so(tmp_path, capsys):
    (tmp_path / "zero.onnx").write_bytes(b"")
    image = tmp_path / "i.png"
    Image.new("L", (28, 28)).save(image)
    assert main(["predict", str(tmp_path / "zero.onnx"), str(image)]) == 2
    assert capsys.readouterr().err == f"mobilenets: error: {tmp_path / 'zero.onnx'}: is empty (0 bytes)\n"


@pytest.mark.parametrize("argv", [["export", "CKPT", "--format", "tflite", "--out", "OUT"],
                                  ["export", "CKPT", "--format", "onnx", "--out", "OUT"],
                                  ["quantize", "CKPT", "--out", "OUT"],
                                  ["convert", "CKPT", "--from", "torchvision", "--model",
                                   "mobilenet_v2", "--out", "OUT"]])
def test_writers_refuse_an_unwritable_output_before_the_work(files, tmp_path, capsys, argv):
    _, _, paths = files
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    out = blocker / "x.out"
    argv = [str(paths["safetensors"]) if a == "CKPT" else str(out) if a == "OUT" else a for a in argv]
    started = time.perf_counter()
    assert main(argv) == 2
    assert time.perf_counter() - started < 5   # refused before the conversion, not after it
    assert capsys.readouterr().err == (f"mobilenets: error: {out}: cannot be written ({blocker} is "
                                       "a file, not a folder)\n")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_export_into_a_read_only_folder_is_refused_first(files, tmp_path, capsys):
    _, _, paths = files
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        assert main(["export", str(paths["safetensors"]), "--format", "onnx", "--out",
                     str(folder / "x.onnx")]) == 2
    finally:
        folder.chmod(0o755)
    assert capsys.readouterr().err.startswith(f"mobilenets: error: {folder / 'x.onnx'}: cannot be written (")
