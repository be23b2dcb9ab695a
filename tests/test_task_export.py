"""ONNX export of a detector, run in ONNX Runtime against PyTorch."""
import json

import onnx
import pytest
import torch

from mobilenets import MobileNetsError, create_model
from mobilenets.detection import select
from mobilenets.task_export import DetectionGraph, compare, export_onnx, run_onnx

pytestmark = pytest.mark.usefixtures("one_thread")


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


def test_compare_rejects_differences(tmp_path):
    logits = torch.randn(1, 4, 8, 8)
    with pytest.raises(MobileNetsError, match="differs from PyTorch"):
        compare("segmentation", (logits,), (logits * 1.01,), tmp_path / "x.onnx")
    with pytest.raises(MobileNetsError, match="is not a detection or segmentation model"):
        export_onnx(create_model("mobilenet_v2_035", num_classes=2), tmp_path / "c.onnx", 64)
