"""Evaluation and prediction from task weights files."""
import pytest
from PIL import Image

from mobilenets import MobileNetsError, create_model
from mobilenets.datasets.scenes import CLASSES
from mobilenets.train.task_eval import evaluate_checkpoint
from mobilenets.deploy.predict import predict_image
from mobilenets.models.weights import save_task_weights
from mobilenets.models.weights import save_weights

# Scenes are built from Fashion-MNIST items.
pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.needs_fmnist]

NAMES = ["background", *CLASSES]


@pytest.mark.parametrize("name,task,sub", [("ssdlite_mobilenet_v2", "detection", "coco"),
                                           ("deeplabv3_mobilenet_v2", "segmentation", "voc")])
def test_eval_and_predict(tmp_path, scenes, name, task, sub):
    model = create_model(name, num_classes=11, width_mult=0.35)
    ckpt = tmp_path / "w.safetensors"
    save_task_weights(ckpt, model, task, NAMES, 64)
    metrics = evaluate_checkpoint(ckpt, str(scenes / sub), out=str(tmp_path / "eval"), draw=2)
    assert 0 <= metrics["metric"] <= 1
    assert (tmp_path / "eval/metrics.json").is_file()
    assert Image.open(tmp_path / "eval/pred_001.png").size == (64, 64)
    result = predict_image(ckpt, scenes / "voc/JPEGImages/val_000000.jpg", tmp_path / "p.png", min_score=0.0)
    assert Image.open(tmp_path / "p.png").size == (64, 64)
    if task == "detection":
        assert all(label in NAMES for label in result["labels"])
        with pytest.raises(MobileNetsError, match="--flip applies to classifiers and segmenters"):
            evaluate_checkpoint(ckpt, str(scenes / sub), flip=True)
    else:
        assert sum(result["pixels"].values()) == 64 * 64
        flipped = evaluate_checkpoint(ckpt, str(scenes / sub), flip=True)
        assert flipped["images"] == metrics["images"] == 6
        assert 0 <= flipped["mIoU"] <= 1


def test_not_a_task_file(tmp_path, scenes):
    path = tmp_path / "cls.safetensors"
    save_weights(path, create_model("mobilenet_v2_035", num_classes=3))
    with pytest.raises(MobileNetsError, match="not a detection or segmentation weights file"):
        evaluate_checkpoint(path, str(scenes / "coco"))
    model = create_model("ssdlite_mobilenet_v2", num_classes=4, width_mult=0.35)
    save_task_weights(path, model, "detection", NAMES[:4], 64)
    with pytest.raises(MobileNetsError, match="has 10 classes but .* was trained for 3"):
        evaluate_checkpoint(path, str(scenes / "coco"))
    with pytest.raises(MobileNetsError, match="not a readable image"):
        (tmp_path / "bad.jpg").write_bytes(b"no")
        predict_image(path, tmp_path / "bad.jpg", tmp_path / "o.png")
