import torch

from mobilenets import create_model
from mobilenets.models.convert import options_for


def _norms(model):
    return {(m.eps, m.momentum) for m in model.modules()
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)}


def test_batch_norm_epsilon_per_family():
    # slim (V1, V2), V3 paper/torchvision: eps 1e-3; timm's V4: PyTorch's 1e-5. Momentum stays
    # 0.1 unless given (short runs need running statistics that forget their start).
    for name in ("mobilenet_v1_025", "mobilenet_v2_035", "mobilenet_v3_small_075"):
        assert _norms(create_model(name)) == {(1e-3, 0.1)}
    assert _norms(create_model("mobilenet_v4_conv_small_035")) == {(1e-5, 0.1)}
    assert _norms(create_model("mobilenet_v4_conv_small_035", padding="same")) == {(1e-3, 0.1)}
    assert _norms(create_model("mobilenet_v2_035", bn_eps=1e-5, bn_momentum=0.003)) == {(1e-5, 0.003)}


def test_converted_weights_keep_their_source_epsilon():
    # torchvision's V2 and timm's PyTorch-trained models use BatchNorm2d's 1e-5, torchvision's
    # V3 and every TensorFlow-trained source 1e-3: stated per source, whatever our defaults.
    assert options_for("torchvision", "mobilenet_v2")["bn_eps"] == 1e-5
    assert options_for("torchvision", "mobilenet_v3_large")["bn_eps"] == 1e-3
    assert options_for("timm", "mobilenet_v1")["bn_eps"] == 1e-5
    assert options_for("timm", "mobilenet_v3_small")["bn_eps"] == 1e-5
    assert options_for("keras", "mobilenet_v2")["bn_eps"] == 1e-3
