import math

import pytest
import torch

from mobilenets import MobileNetsError, create_model
from mobilenets.models.detection import DetectionLoss


def _bce(z: list[float], target: int) -> float:
    # Binary cross-entropy of each class's logit against the one-hot target, summed:
    # Σ_c log(1 + e^z_c) − z_target.
    return sum(math.log1p(math.exp(v)) for v in z) - z[target]


def test_sigmoid_loss_is_per_class_bce_with_the_same_hard_negatives():
    anchors = torch.tensor([[0., 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50], [60, 60, 70, 70],
                            [0, 40, 10, 50]])
    targets = [{"boxes": torch.tensor([[0., 0, 10, 10]]), "labels": torch.tensor([2])}]
    logits = torch.zeros(1, 5, 3)
    logits[0, 1:, 1] = torch.tensor([1., 2, 3, 4])   # background anchors, ranked 4 < 3 < 2 < 1
    loss = DetectionLoss(neg_pos_ratio=2, classification="sigmoid")(
        logits, torch.zeros(1, 5, 4), targets, anchors)
    z = logits[0].tolist()
    expected = _bce(z[0], 2) + _bce(z[4], 0) + _bce(z[3], 0)
    assert loss["cls_loss"].item() == pytest.approx(expected, rel=1e-6)


def test_classification_option_is_checked():
    with pytest.raises(MobileNetsError, match="classification='focal' is not one of"):
        create_model("ssdlite_mobilenet_v2", width_mult=0.35, num_classes=3, classification="focal")


def test_tiny_sigmoid_detector_trains_and_scores_probabilities():
    torch.manual_seed(0)
    model = create_model("ssdlite_mobilenet_v2", width_mult=0.35, num_classes=3,
                         classification="sigmoid")
    x = torch.randn(2, 3, 64, 64)
    targets = [{"boxes": torch.tensor([[8., 8, 40, 40]]), "labels": torch.tensor([1])},
               {"boxes": torch.tensor([[20., 10, 60, 50]]), "labels": torch.tensor([2])}]
    anchors = model.anchors((64, 64))
    criterion = DetectionLoss(classification="sigmoid")
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(6):
        logits, deltas = model(x)
        loss = criterion(logits, deltas, targets, anchors)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]
    model.eval()
    det = model.detect(x, score_threshold=0.0)
    scores = torch.cat([d["scores"] for d in det])
    assert scores.numel() > 0 and scores.min() >= 0 and scores.max() <= 1
    # Sigmoid scores are independent: a class may score high without the others summing to 1.
    logits, _ = model(x)
    assert not torch.allclose(logits.sigmoid().sum(-1), torch.ones(2, logits.shape[1]))
