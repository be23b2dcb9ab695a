import numpy as np
import onnx
import pytest
import torch

from deploy_models import PRE, fmnist_checkpoint, fmnist_test_images
from mobilenets import MobileNetsError
from mobilenets.datasets.calibration import calibration_set, preprocessed
from mobilenets.cli import main
from mobilenets.deploy.export import export, onnx_metadata, ort_session
from mobilenets.deploy.quantize import cpu_has_vnni, quantize_onnx

# A checkpoint with Fashion-MNIST statistics, calibrated on Fashion-MNIST images.
pytestmark = [pytest.mark.needs_fmnist, pytest.mark.slow]   # the fixture takes a minute


@pytest.fixture(scope="module")
def fp32(tmp_path_factory):
    d = tmp_path_factory.mktemp("q")
    model = fmnist_checkpoint(d / "v2.safetensors")
    export(model, d / "fp32.onnx", "onnx", {"preprocessing": PRE, "classes": None})
    return d, model


def test_int8_runs_and_roughly_agrees(fp32):
    d, model = fp32
    quantize_onnx(d / "fp32.onnx", d / "int8.onnx", calibration_set("fashion-mnist", PRE, 128))
    proto = onnx.load(str(d / "int8.onnx"))
    ops = {n.op_type for n in proto.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    # per-channel: every conv weight has one scale per output channel
    scales = {i.name: onnx.numpy_helper.to_array(i) for i in proto.graph.initializer}
    assert any(v.ndim == 1 and v.size > 1 for k, v in scales.items() if "scale" in k)
    meta = onnx_metadata(d / "int8.onnx")
    assert meta["precision"] == "int8" and meta["quantization"]["calibration_images"] == 128
    images, _ = fmnist_test_images(256)
    x = preprocessed(images, PRE).numpy()
    ref = ort_session(d / "fp32.onnx").run(None, {"images": x})[0]
    got = ort_session(d / "int8.onnx").run(None, {"images": x})[0]
    # An untrained network amplifies any perturbation, so the yardstick is the fp32 model's own
    # sensitivity: int8 must stay as close to fp32 as fp32 stays to itself under input noise of
    # std 0.02 (about 2 uint8 steps of the normalised input).
    g = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        noisy = model(torch.from_numpy(x) + 0.02 * torch.randn(x.shape, generator=g)).numpy()

    def corr(a):
        return np.corrcoef(ref.ravel(), a.ravel())[0, 1]

    def agree(a):
        return (ref.argmax(1) == a.argmax(1)).mean()
    assert corr(got) > corr(noisy) and agree(got) > agree(noisy) - 0.02, \
        (corr(got), corr(noisy), agree(got), agree(noisy))
    assert corr(got) > 0.85 and agree(got) > 0.7


def test_calibration_set_errors(fp32, tmp_path):
    d, _ = fp32
    with pytest.raises(MobileNetsError, match="calibration set is empty"):
        quantize_onnx(d / "fp32.onnx", tmp_path / "q.onnx", torch.empty(0, 1, 32, 32))
    with pytest.raises(MobileNetsError, match=r"calibration images are \[1, 28, 28\], .*fp32.onnx takes \[1, 32, 32\]"):
        quantize_onnx(d / "fp32.onnx", tmp_path / "q.onnx", torch.zeros(4, 1, 28, 28))
    assert not (tmp_path / "q.onnx").exists()


def test_cli_rejects_bad_calibration_files(fp32, tmp_path, capsys):
    d, _ = fp32
    small = tmp_path / "small.npy"
    np.save(small, np.zeros((8, 28, 28), np.uint8))
    empty = tmp_path / "empty.npy"
    np.save(empty, np.zeros((0, 32, 32), np.uint8))
    for data, message in ((small, "small.npy: images are 28×28, the model takes 32×32"),
                          (empty, "empty.npy: holds 0 images"),
                          (tmp_path / "none.npy", "none.npy: no such file"),
                          ("imagenet", "--data 'imagenet': allowed: 'fashion-mnist' or a .npy file")):
        rc = main(["quantize", str(d / "v2.safetensors"), "--data", str(data),
                   "--out", str(tmp_path / "q.onnx")])
        err = capsys.readouterr().err
        assert rc == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "q.onnx").exists()


def test_vnni_is_read_from_the_cpu_flags():
    zen3 = "processor : 0\nflags\t\t: fpu sse2 avx avx2 fma bmi2\n"
    icelake = "flags : fpu avx2 avx512f avx512bw avx512_vnni\n"
    alder = "flags : fpu avx2 avx_vnni\n"
    assert not cpu_has_vnni(zen3) and cpu_has_vnni(icelake) and cpu_has_vnni(alder)
    assert not cpu_has_vnni("")
