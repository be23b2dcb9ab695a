"""Phone engines: ExecuTorch .pte (fp32, int8), LiteRT .tflite and OpenVINO, each compared with
an independent reference: the model in float64 for fp32 files, and for int8 files ONNX Runtime's
int8 of the same model with the same recipe and calibration images.

Lowering to XNNPACK re-traces the graph many times: each .pte export takes 0.5–2 minutes on a
shared 2-core machine (an int8 one longer), so every file is made once per module.
"""
import copy
import json
import os

import numpy as np
import pytest
import torch

from deploy_models import PRE, fmnist_checkpoint, fmnist_test_images
from mobilenets import MobileNetsError
from mobilenets.cli import main
from mobilenets.datasets.calibration import FASHION_MNIST_CLASSES, calibration_set, preprocessed
from mobilenets.deploy import executorch, litert, mobile
from mobilenets.deploy.backends import OpenVinoBackend
from mobilenets.deploy.export import INPUT_NAME, export, ort_session
from mobilenets.deploy.predict import Predictor
from mobilenets.deploy.quantize import quantize_onnx

pytestmark = [pytest.mark.needs_fmnist, pytest.mark.slow]   # the .pte exports take minutes
META = {"preprocessing": PRE, "classes": FASHION_MNIST_CLASSES}
CALIBRATION_IMAGES = 64


def rel_error(got, model, x):
    """max |got − exact| / max |exact|, exact = the model in float64."""
    with torch.inference_mode():
        exact = copy.deepcopy(model).double()(x.double())
    return ((got.double() - exact).abs().max() / exact.abs().max()).item()


def closeness_to_fp32(got, ref):
    """(correlation of the logits, top-1 agreement) of an int8 model's logits with fp32's."""
    got, ref = np.asarray(got), np.asarray(ref)
    return np.corrcoef(ref.ravel(), got.ravel())[0, 1], (ref.argmax(1) == got.argmax(1)).mean()


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("mobile")
    # V3-Small brings hard-swish, squeeze-excite (hard-sigmoid gates) and 5×5 depthwise.
    return d, {"v2": fmnist_checkpoint(d / "v2.safetensors"),
               "v3": fmnist_checkpoint(d / "v3.safetensors", "mobilenet_v3_small")}


@pytest.fixture(scope="module")
def pte(models):
    """fp32 .pte files: V2 through the CLI, V3 through the library (returning its report)."""
    pytest.importorskip("executorch", reason="the 'mobile' extra is not installed")
    d, ms = models
    assert main(["export", str(d / "v2.safetensors"), "--format", "executorch",
                 "--out", str(d / "v2.pte")]) == 0
    r = export(ms["v3"], d / "v3.pte", "executorch", META)
    return {"v2": d / "v2.pte", "v3": d / "v3.pte"}, r


@pytest.fixture(scope="module")
def pte_int8(models):
    """int8 .pte files: V2 through `mobilenets quantize --format executorch`, V3 through the
    library, both calibrated on the same Fashion-MNIST training images."""
    pytest.importorskip("executorch", reason="the 'mobile' extra is not installed")
    d, ms = models
    assert main(["quantize", str(d / "v2.safetensors"), "--format", "executorch", "--calib-size",
                 str(CALIBRATION_IMAGES), "--eval-size", "0", "--out", str(d / "v2_int8.pte"),
                 "--json"]) == 0
    summary = executorch.quantize_pte(ms["v3"], META, d / "v3_int8.pte",
                                      calibration_set("fashion-mnist", PRE, CALIBRATION_IMAGES))
    return {"v2": d / "v2_int8.pte", "v3": d / "v3_int8.pte"}, summary


def test_pte_matches_float64_at_any_batch(models, pte):
    _, ms = models
    paths, r = pte
    # The whole of V3 (h-swish, SE) runs in one XNNPACK subgraph: the export-path rewrites work.
    assert r["delegation"]["outside_delegate"] == {} and r["delegation"]["subgraphs"] == 1
    assert r["max_rel_error"] <= r["allowed_rel_error"]
    g = torch.Generator().manual_seed(3)
    for name in ("v2", "v3"):
        backend = executorch.ExecuTorchBackend(paths[name], threads=1)
        assert backend.meta["model"] == ("mobilenet_v2" if name == "v2" else "mobilenet_v3_small")
        assert backend.meta["preprocessing"] == PRE and backend.meta["input_shape"] == [1, 32, 32]
        assert backend.meta["classes"][9] == "Ankle boot"
        assert backend.meta["executorch"]["max_batch"] == 64
        # 1 and 5 images, and more than the planned batch of 64 (split by the runner)
        for n in (1, 5, 67):
            x = torch.randn(n, 1, 32, 32, generator=g)
            got = backend(x)
            assert got.shape == (n, 10)
            assert rel_error(got, ms[name], x) <= 1e-4, (name, n)
    # The thread pool is process-wide; a loaded program keeps it, so another size is refused.
    with pytest.raises(MobileNetsError, match=r"^ExecuTorch's thread pool is process-wide and runs "
                                              r"1 threads for a loaded program; threads=2 needs"):
        executorch.ExecuTorchBackend(paths["v2"], threads=2)
    assert executorch.ExecuTorchBackend(paths["v2"]).threads == 1


def test_pte_int8_as_close_to_fp32_as_onnxruntime_int8(models, pte_int8, tmp_path):
    _, ms = models
    paths, summary = pte_int8
    assert summary["delegation"]["outside_delegate"] == {}
    assert summary["calibration_images"] == CALIBRATION_IMAGES and 0 <= summary["agreement"] <= 100
    calib = calibration_set("fashion-mnist", PRE, CALIBRATION_IMAGES)
    images, _ = fmnist_test_images(128)
    x = preprocessed(images, PRE)
    for name in ("v2", "v3"):
        backend = executorch.ExecuTorchBackend(paths[name])
        assert backend.meta["precision"] == "int8"
        assert backend.meta["quantization"]["weights"] == "int8 symmetric per-channel"
        with torch.inference_mode():
            ref = ms[name](x).numpy()
        # ONNX Runtime's int8 of the same model, same recipe (min/max, per-channel symmetric
        # weights) and images. These untrained networks amplify any perturbation, so int8 is far
        # from fp32 in every engine; a wrong scale or layout gives correlation near 0 and
        # agreement near 10%. The engines' activation grids differ (ONNX Runtime: uint8, and 7-bit
        # weights without VNNI; XNNPACK: int8), which left ExecuTorch's V2 0.03 below ONNX
        # Runtime's in both measures here, hence the margins.
        export(ms[name], tmp_path / f"{name}.onnx", "onnx", META)
        quantize_onnx(tmp_path / f"{name}.onnx", tmp_path / f"{name}_int8.onnx", calib)
        ort = ort_session(tmp_path / f"{name}_int8.onnx", 1).run(None, {INPUT_NAME: x.numpy()})[0]
        ort_corr, ort_agree = closeness_to_fp32(ort, ref)
        corr, agree = closeness_to_fp32(backend(x), ref)
        assert corr >= ort_corr - 0.05 and agree >= ort_agree - 0.06, (name, corr, agree,
                                                                       ort_corr, ort_agree)


def test_predictor_and_bench_take_pte(models, pte, pte_int8, capsys):
    d, _ = models
    images, _ = fmnist_test_images(16)
    ref = Predictor(d / "v2.safetensors", topk=3)(images)
    got = Predictor(pte[0]["v2"], topk=3)(images)
    assert [[t["index"] for t in o] for o in got] == [[t["index"] for t in o] for o in ref]
    assert got[0][0]["label"] in FASHION_MNIST_CLASSES
    assert all(abs(a["prob"] - b["prob"]) < 1e-4 for o, r in zip(got, ref) for a, b in zip(o, r))
    int8 = Predictor(pte_int8[0]["v2"])(images)
    assert len(int8) == 16 and len(int8[0]) == 5 and int8[0][0]["prob"] >= int8[0][1]["prob"]
    assert main(["bench", str(pte_int8[0]["v2"]), "--batch", "1", "2", "--repeats", "2",
                 "--threads", "1", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["backend"], r["precision"], r["batch"]) for r in rows] == \
        [("executorch", "int8", 1), ("executorch", "int8", 2)]


def test_corrupt_pte_is_one_line_error(pte, tmp_path, capsys):
    data = pte[0]["v2"].read_bytes()
    files = {"random": os.urandom(4096), "truncated": data[:len(data) // 2], "empty": b""}
    for name, blob in files.items():
        (tmp_path / f"{name}.pte").write_bytes(blob)
    with pytest.raises(MobileNetsError, match=r"random\.pte: not an ExecuTorch program"):
        Predictor(tmp_path / "random.pte")
    with pytest.raises(MobileNetsError, match=r"truncated\.pte: truncated ExecuTorch program \(\d+ "
                                              r"bytes, its header describes \d+\)$"):
        Predictor(tmp_path / "truncated.pte")
    for name in files:
        assert main(["bench", str(tmp_path / f"{name}.pte"), "--batch", "1", "--repeats", "1"]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"mobilenets: error: {tmp_path / name}.pte: ") and err.count("\n") == 1


def test_missing_extra_is_one_line_error(models, tmp_path, monkeypatch, capsys):
    d, ms = models
    real = mobile.importlib.import_module

    def no_mobile(name, *a, **k):
        if name.split(".")[0] in mobile.MOBILE_PACKAGES:
            raise ImportError(f"No module named {name!r}")
        return real(name, *a, **k)
    monkeypatch.setattr(mobile.importlib, "import_module", no_mobile)
    hint = r"needs the 'mobile' extra: pip install -e \"\.\[mobile\]\" \(executorch is not installed\)$"
    with pytest.raises(MobileNetsError, match=r"m\.pte: ExecuTorch export " + hint):
        export(ms["v2"], tmp_path / "m.pte", "executorch", META)
    (tmp_path / "x.pte").write_bytes(b"\0" * 64)
    with pytest.raises(MobileNetsError, match=r"x\.pte: running an ExecuTorch program " + hint):
        Predictor(tmp_path / "x.pte")
    with pytest.raises(MobileNetsError, match=r"^The openvino backend needs the 'mobile' extra"):
        OpenVinoBackend(tmp_path / "m.onnx")
    assert main(["export", str(d / "v2.safetensors"), "--format", "tflite",
                 "--out", str(tmp_path / "m.tflite")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "LiteRT export needs the 'mobile' extra" in err
    assert os.listdir(tmp_path) == ["x.pte"]


def test_openvino_matches_float64_and_benches(models, capsys):
    pytest.importorskip("openvino", reason="the 'mobile' extra is not installed")
    d, ms = models
    export(ms["v3"], d / "v3.onnx", "onnx", META)
    backend = OpenVinoBackend(d / "v3.onnx", threads=1)
    assert backend.meta["model"] == "mobilenet_v3_small"
    g = torch.Generator().manual_seed(4)
    for n in (1, 3):
        x = torch.randn(n, 1, 32, 32, generator=g)
        assert rel_error(backend(x), ms["v3"], x) <= 1e-4
    assert main(["bench", str(d / "v3.safetensors"), "--backends", "eager,openvino", "--batch", "1",
                 "--repeats", "2", "--threads", "1", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["backend"] for r in rows] == ["eager", "openvino"]


@pytest.fixture(scope="module")
def tflite(models):
    pytest.importorskip("litert_torch", reason="the 'mobile' extra is not installed")
    pytest.importorskip("ai_edge_litert", reason="the 'mobile' extra is not installed")
    d, ms = models
    assert main(["export", str(d / "v2.safetensors"), "--format", "tflite",
                 "--out", str(d / "v2.tflite")]) == 0
    export(ms["v3"], d / "v3.tflite", "tflite", META)
    return {"v2": d / "v2.tflite", "v3": d / "v3.tflite"}


def test_tflite_matches_float64_and_predicts(models, tflite, tmp_path):
    d, ms = models
    g = torch.Generator().manual_seed(5)
    for name in ("v2", "v3"):
        backend = litert.TFLiteBackend(tflite[name], threads=1)
        assert backend.meta["preprocessing"] == PRE and backend.meta["classes"][0] == "T-shirt/top"
        x = torch.randn(3, 1, 32, 32, generator=g)
        assert rel_error(backend(x), ms[name], x) <= 1e-4, name
    images, _ = fmnist_test_images(8)
    ref = Predictor(d / "v3.safetensors")(images)
    got = Predictor(tflite["v3"])(images)
    assert [o[0]["index"] for o in got] == [o[0]["index"] for o in ref]
    data = tflite["v2"].read_bytes()
    (tmp_path / "bad.tflite").write_bytes(os.urandom(1000))
    (tmp_path / "cut.tflite").write_bytes(data[:len(data) // 3])
    with pytest.raises(MobileNetsError, match=r"bad\.tflite: not a TFLite flatbuffer"):
        Predictor(tmp_path / "bad.tflite")
    with pytest.raises(MobileNetsError, match=r"cut\.tflite: not a (readable|loadable) "):
        Predictor(tmp_path / "cut.tflite")


def test_cut_tflite_is_one_line_error_before_the_interpreter(tmp_path):
    """A flatbuffer cut short is refused while its metadata is read: the interpreter's C++ parser
    never sees it. Built here with the TFLite schema: one weight-sized buffer and the metadata."""
    schema = pytest.importorskip("ai_edge_litert.schema_py_generated")
    flatbuffers = pytest.importorskip("flatbuffers")
    meta = {"format": "mobilenets/1", "model": "mobilenet_v2"}
    tree = schema.ModelT()
    tree.version, tree.buffers = 3, []
    for blob in (np.zeros(50000, np.uint8), np.frombuffer(json.dumps(meta).encode(), np.uint8)):
        buf = schema.BufferT()
        buf.data = blob
        tree.buffers.append(buf)
    entry = schema.MetadataT()
    entry.name, entry.buffer = "mobilenets.json", 1
    tree.metadata = [entry]
    builder = flatbuffers.Builder(1 << 16)
    builder.Finish(tree.Pack(builder), file_identifier=b"TFL3")
    data = bytes(builder.Output())
    (tmp_path / "whole.tflite").write_bytes(data)
    assert litert.tflite_metadata(tmp_path / "whole.tflite") == meta
    for cut in (len(data) // 3, len(data) - 8):
        (tmp_path / "cut.tflite").write_bytes(data[:cut])
        with pytest.raises(MobileNetsError, match=r"cut\.tflite: not a readable TFLite file \("):
            Predictor(tmp_path / "cut.tflite")


def test_event_tracer_names_the_float_work_of_each_file(models, pte, pte_int8):
    """ExecuTorch's event tracer names what XNNPACK ran. fp32: every convolution of the fused
    model runs as an F32 convolution or matrix product. int8: every convolution runs in 8 bits;
    V2 runs nothing in float, V3-Small's squeeze-excite and h-swish arithmetic does (listed in
    docs/deploy.md), but no convolution."""
    from mobilenets.deploy.fuse import prepare_for_inference
    _, ms = models
    fp32, _ = pte
    int8, _ = pte_int8
    x = preprocessed(fmnist_test_images(1)[0], PRE)
    fused = prepare_for_inference(ms["v2"], channels_last=False)
    layers = sum(isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)) for m in fused.modules())
    calls = executorch.xnnpack_operators(fp32["v2"], x)
    assert not any(t in op for ops in calls for op in ops for t in ("QS8", "QC8", "QU8"))
    ops = executorch.xnnpack_float_ops(calls)
    assert sum(n for op, n in ops.items() if op.startswith(("Convolution", "Fully Connected"))) == layers
    for name in ("v2", "v3"):
        calls = executorch.xnnpack_operators(int8[name], x)
        assert sum(op.startswith("Convolution") and "QC8" in op for op in calls[0]) > 0
        floating = executorch.xnnpack_float_ops(calls)
        assert not any(op.startswith(("Convolution", "Fully Connected")) for op in floating), (name, floating)
        if name == "v2":
            assert floating == {}


def test_float_ops_follow_the_converts_between_int8_and_float():
    calls = [["Convert (NC)", "Convolution (NHWC, QC8) IGEMM", "Convert (NC)", "Mean (ND)", "Multiply (ND)",
              "Convert (NC)", "Add (ND, QS8)", "Convolution (NHWC, F32) IGEMM", "Convert (NC)", "Mean (ND)"],
             ["Mean (ND)"]]
    assert executorch.xnnpack_float_ops(calls) == {"Convolution (NHWC, F32) IGEMM": 1, "Mean (ND)": 3,
                                                  "Multiply (ND)": 1}
