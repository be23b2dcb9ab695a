"""ONNX export of a detector, run in ONNX Runtime against PyTorch."""
import json

import onnx
import pytest
import torch
from torch import nn

from mobilenets import MobileNetsError, create_model
from mobilenets.cli import main
from mobilenets.models.detection import select
from mobilenets.deploy.export import ExportReference
from mobilenets.deploy.task_export import DetectionGraph, compare, export_onnx, run_onnx
from mobilenets.models.weights import save_weights

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.slow
def test_detector_onnx_matches_pytorch(tmp_path):
    torch.manual_seed(0)
    model = create_model("ssdlite_mobilenet_v2", num_classes=3, width_mult=0.35).eval()
    path = tmp_path / "det.onnx"
    report = export_onnx(model, path, 64, classes=["background", "a", "b"])
    assert report["max_rel_error"] < 1e-4 and report["outputs"] == ["boxes", "scores"]
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    meta = json.loads(props["mobilenets.json"])
    assert meta["task"] == "detection" and meta["classes"][1] == "a" and meta["input_shape"] == [3, 64, 64]
    x = torch.randn(3, 3, 64, 64)          # another batch size than the export's
    boxes, scores = run_onnx(path, x)
    with torch.no_grad():
        ref_boxes, ref_scores = DetectionGraph(model, (64, 64))(x)
    torch.testing.assert_close(boxes, ref_boxes, rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(scores, ref_scores, rtol=1e-4, atol=1e-5)
    # boxes are decoded in the graph: the best anchors' boxes equal the PyTorch detector's
    dets = select(boxes, scores, (64, 64), max_detections=5)
    ref = model.detect(x, max_detections=5)
    torch.testing.assert_close(dets[0]["scores"], ref[0]["scores"], rtol=1e-4, atol=1e-5)


def test_checks_reject_differences(tmp_path):
    logits = torch.randn(1, 4, 8, 8)
    reference = ExportReference(nn.Identity(), logits)
    assert reference.check("ONNX", logits.numpy(), tmp_path / "x.onnx") < 1e-7
    with pytest.raises(MobileNetsError, match="x.onnx: ONNX export is 1.0.e-02 from the float64"):
        reference.check("ONNX", logits * 1.01, tmp_path / "x.onnx")
    # both outputs of a detector count: a 1% error in the scores alone is refused
    raw = torch.randn(1, 5, 4)
    two = ExportReference(_BoxesAndScores(), raw)
    boxes, scores = _BoxesAndScores()(raw)
    assert two.check("ONNX", (boxes, scores), tmp_path / "x.onnx") < 1e-6
    with pytest.raises(MobileNetsError, match="from the float64"):
        two.check("ONNX", (boxes, scores * 1.01), tmp_path / "x.onnx")
    flipped = logits.clone()
    flipped[..., 0, :] = -flipped[..., 0, :]   # an eighth of the pixels change class
    with pytest.raises(MobileNetsError, match="masks agree with PyTorch's on only"):
        compare("segmentation", (logits,), (flipped,), tmp_path / "x.onnx")
    with pytest.raises(MobileNetsError, match="is not a detection or segmentation model"):
        export_onnx(create_model("mobilenet_v2_035", num_classes=2), tmp_path / "c.onnx", 64)


class _BoxesAndScores(nn.Module):
    def forward(self, x):
        return x * 64, x.softmax(-1)


@pytest.mark.slow
def test_cli_exports_a_segmenter_checkpoint_with_squeeze_excite(tmp_path, capsys):
    # V3's SE gates make float32 itself less exact; the bound is the classifiers' (float64 based)
    torch.manual_seed(0)
    model = create_model("lraspp_mobilenet_v3_large", num_classes=3, width_mult=0.35).eval()
    weights, out = tmp_path / "seg.safetensors", tmp_path / "seg.onnx"
    save_weights(weights, model, {"task": "segmentation", "classes": ["bg", "a", "b"],
                                  "preprocessing": {"resolution": 64, "mean": [0.5] * 3,
                                                    "std": [0.25] * 3, "in_chans": 3}})
    assert main(["export", str(weights), "--out", str(out)]) == 0
    assert "segmentation, outputs logits, 64 px" in capsys.readouterr().out
    meta = json.loads({p.key: p.value for p in onnx.load(str(out)).metadata_props}["mobilenets.json"])
    assert meta["task"] == "segmentation" and meta["classes"] == ["bg", "a", "b"]
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(run_onnx(out, x)[0], model(x), rtol=1e-3, atol=1e-3)
    assert main(["export", str(weights), "--out", str(tmp_path / "seg.ts"), "--format", "torchscript"]) == 2
    assert "seg.safetensors: segmentation models export to ONNX only" in capsys.readouterr().err
    assert not (tmp_path / "seg.ts").exists()
