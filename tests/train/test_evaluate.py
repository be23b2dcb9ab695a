"""`evaluate` on real Fashion-MNIST test images: plain and with flipped copies."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mobilenets import create_model
from mobilenets.datasets.classification import open_dataset
from mobilenets.train.evaluate import evaluate

# Fashion-MNIST test images.
pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.needs_fmnist]


def test_flip_scores_the_mean_of_image_and_mirror_probabilities():
    val = open_dataset("fashion-mnist", 28, None, in_chans=1).val.subset(96, 0)
    torch.manual_seed(0)
    model = create_model("mobilenet_v2", num_classes=10, in_chans=1, width_mult=0.35, small_input=True)
    x, y = next(val.batches(96, 0, 0, shuffle=False, drop_last=False))
    # batch-norm statistics of these images: with the initial ones all logits tie to ~1e-8
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    with torch.no_grad():
        model.train()(x)
    model.eval()
    with torch.no_grad():
        plain_p = model(x).softmax(1)
        p = (plain_p + model(x.flip(-1)).softmax(1)) / 2
    kw = dict(num_classes=10, memory_format=torch.contiguous_format)
    flipped, plain = evaluate(model, val, 32, flip=True, **kw), evaluate(model, val, 32, **kw)
    assert flipped["images"] == plain["images"] == 96
    assert flipped["top1"] == (p.argmax(1) == y).sum().item() / 96
    assert flipped["top5"] == (p.topk(5, 1).indices == y[:, None]).any(1).sum().item() / 96
    assert flipped["loss"] == pytest.approx(F.nll_loss(p.log(), y).item(), rel=1e-5)
    assert plain["loss"] == pytest.approx(F.nll_loss(plain_p.log(), y).item(), rel=1e-5)
    assert abs(flipped["loss"] - plain["loss"]) > 1e-4    # the mirror images changed the answer (float noise: ~1e-7)
