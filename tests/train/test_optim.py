import json

import pytest
import torch

from mobilenets import MobileNetsError, create_model
from mobilenets.train.optim import build_optimizer
from mobilenets.train.recipes import DEFAULTS, RECIPES_DIR, validate


def _cfg(**kw):
    return validate({**DEFAULTS, "optimizer": "rmsprop", "eps": 1.0, **kw})


def test_weight_decay_on_conv_leaves_depthwise_bn_and_biases_alone():
    model = create_model("mobilenet_v1_025", num_classes=10)
    opt = build_optimizer(model, _cfg(weight_decay_on="conv"))
    decayed, free = opt.param_groups
    assert decayed["weight_decay"] == 4e-5 and free["weight_decay"] == 0.0
    # V1 Table 1 at α = 0.25 (slim: max(int(c·α), 8)): the stem 3×3×3×8, thirteen pointwise
    # convs and the 256 → 10 classifier weight; the thirteen depthwise filters, every BN
    # and the classifier bias are not decayed.
    widths = [8, 16, 32, 32, 64, 64, 128, 128, 128, 128, 128, 128, 256, 256]
    expected = 3 * 3 * 3 * 8 + sum(a * b for a, b in zip(widths, widths[1:])) + 256 * 10
    assert sum(p.numel() for p in decayed["params"]) == expected
    assert len(decayed["params"]) == 1 + 13 + 1
    assert not any(p.ndim == 4 and p.shape[1] == 1 for p in decayed["params"])   # no depthwise
    total = sum(p.numel() for p in model.parameters())
    assert sum(p.numel() for p in free["params"]) == total - expected


def test_weight_decay_on_all_keeps_the_old_split():
    model = create_model("mobilenet_v1_025", num_classes=10)
    decayed, _ = build_optimizer(model, _cfg()).param_groups
    assert all(p.ndim > 1 for p in decayed["params"])
    assert any(p.ndim == 4 and p.shape[1] == 1 for p in decayed["params"])   # depthwise too
    assert build_optimizer(model, _cfg(wd_norm_bias=True)).param_groups[1]["params"] == []


def test_paper_recipe_follows_the_reference_trainer():
    recipe = json.loads((RECIPES_DIR / "paper.json").read_text())
    assert recipe["eps"] == 1.0 and recipe["weight_decay_on"] == "conv"   # slim's --opt_epsilon
    opt = build_optimizer(torch.nn.Linear(2, 2), validate({**DEFAULTS, **recipe}))
    assert isinstance(opt, torch.optim.RMSprop) and opt.defaults["eps"] == 1.0


def test_weight_decay_on_errors_name_the_key():
    with pytest.raises(MobileNetsError, match="weight_decay_on='dense' is invalid"):
        _cfg(weight_decay_on="dense")
    with pytest.raises(MobileNetsError, match="wd_norm_bias=True is invalid"):
        _cfg(weight_decay_on="conv", wd_norm_bias=True)
