import pytest
import torch
from torchvision.io import write_png

from deploy_models import PRE, fmnist_checkpoint, fmnist_test_images
from mobilenets import MobileNetsError
from mobilenets.calibration import FASHION_MNIST_CLASSES, calibration_set, preprocessed
from mobilenets.cli import main
from mobilenets.export import export
from mobilenets.predict import Predictor
from mobilenets.quantize import quantize_onnx


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
    images, _ = fmnist_test_images(32)
    x = preprocessed(images, PRE)
    assert x.shape == (32, 1, 32, 32) and abs(x.mean().item() - (images.float().mean() / 255 - 0.286) / 0.353) < 0.02
    with torch.inference_mode():
        ref = model(x)
    ref_top = ref.argmax(1)
    for kind, path in paths.items():
        p = Predictor(path, topk=3)
        out = p(images)
        assert len(out) == 32 and len(out[0]) == 3
        assert out[0][0]["label"] in p.classes and out[0][0]["prob"] >= out[0][1]["prob"]
        top = torch.tensor([o[0]["index"] for o in out])
        agree = (top == ref_top).float().mean().item()
        assert agree >= (0.8 if kind == "int8" else 1.0), (kind, agree)


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
    meta["input_shape"], meta["model"] = [3, 224, 224], "mobilenet_v3_large"
    proto.metadata_props[0].value = json.dumps(meta)
    onnx.save(proto, str(tmp_path / "mixed.onnx"))
    with pytest.raises(MobileNetsError, match=r"mixed.onnx: its graph takes .*mobilenet_v3_large on \[3, 224, 224\]"):
        Predictor(tmp_path / "mixed.onnx")


def test_bench_runs_an_int8_file(files):
    from mobilenets.bench import run_bench
    _, _, paths = files
    rows, machine = run_bench(str(paths["int8"]), batches=(1, 2), repeats=3, log=None)
    assert [(r["backend"], r["precision"], r["batch"]) for r in rows] == [
        ("onnxruntime", "int8", 1), ("onnxruntime", "int8", 2)]
    assert machine["input_shape"] == [1, 32, 32]
