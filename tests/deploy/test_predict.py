import pytest
import torch
from torchvision.io import write_png
from PIL import Image

from mobilenets.datasets.fashion_mnist import FMNIST_CLASSES, load_fashion_mnist
from mobilenets.train import DEFAULTS, load_recipe, train

from deploy_models import PRE, fmnist_checkpoint, fmnist_test_images
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
