"""The behaviours timm's and torchvision's own model tests check, with the expected values taken
from timm's models, from the tensors themselves, or from the eager model. A representative
subset of the classifiers (one per family and kind, plus timm's names) keeps this cheap: 32 px,
batch 2."""
import warnings
from pathlib import Path

import pytest
import torch

import mobilenets
from mobilenets.core.errors import MobileNetsError

timm = pytest.importorskip("timm")

# (our name or timm's name, the timm model with the same architecture)
CASES = [
    ("mobilenet_v1", "mobilenetv1_100"),
    ("mobilenet_v2_050", "mobilenetv2_050"),
    ("mobilenet_v3_small", "mobilenetv3_small_100"),
    ("mobilenetv3_large_100", "mobilenetv3_large_100"),
    ("tf_mobilenetv3_small_minimal_100", "tf_mobilenetv3_small_minimal_100"),
    ("mobilenet_v4_conv_small", "mobilenetv4_conv_small"),
    ("mobilenetv4_hybrid_medium", "mobilenetv4_hybrid_medium"),
]
X = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def timm_models():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {t: timm.create_model(t, num_classes=0).eval() for _, t in CASES}


@pytest.mark.parametrize("name,timm_name", CASES)
def test_forward_backward_and_widths(name, timm_name, timm_models):
    model = mobilenets.create_model(name, num_classes=5)
    out = model(X)
    assert out.shape == (2, 5)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    ref = timm_models[timm_name]
    assert (model.num_features, model.head_hidden_size) == (ref.num_features, ref.head_hidden_size)
    bare = mobilenets.create_model(name, num_classes=0).eval()
    with torch.no_grad():
        assert bare(X).shape[-1] == ref(X).shape[-1] == bare.head_hidden_size
        assert bare.forward_features(X).shape[1] == bare.num_features


@pytest.mark.parametrize("name,timm_name", CASES[:3] + CASES[5:6])
def test_drop_path_rates_are_timms(name, timm_name):
    ours = mobilenets.create_model(name, drop_path_rate=0.2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = timm.create_model(timm_name, drop_path_rate=0.2)
    theirs = [round(float(b.drop_path.drop_prob), 6) for stage in ref.blocks for b in stage
              if getattr(b, "has_skip", False) and getattr(b.drop_path, "drop_prob", 0) > 0]
    mine = [round(b.drop_path.p, 6) for b in ours.blocks if getattr(getattr(b, "drop_path", None), "p", 0) > 0]
    assert mine == theirs
    # eval: identity, so the weights of a model without it give the same output
    plain = mobilenets.create_model(name)
    plain.load_state_dict(ours.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(ours.eval()(X), plain.eval()(X))


@pytest.mark.parametrize("name", [c[0] for c in CASES[::2]])
def test_script_and_channels_last_equal_eager(name):
    model = mobilenets.create_model(name).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scripted = torch.jit.script(model)
    with torch.no_grad():
        eager = model(X)
        torch.testing.assert_close(scripted(X), eager)
        torch.testing.assert_close(model.to(memory_format=torch.channels_last)(
            X.to(memory_format=torch.channels_last)), eager, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["mobilenet_v2_050", "mobilenet_v4_conv_small"])
def test_feature_info_is_what_the_maps_show(name):
    model = mobilenets.create_model(name).eval()
    with torch.no_grad():
        final, maps = model.forward_intermediates(X)
        last_two = model.forward_intermediates(X, indices=2, intermediates_only=True)
    info = model.feature_info
    assert info.channels() == [m.shape[1] for m in maps]
    assert info.reduction() == [32 // m.shape[-1] for m in maps]
    assert info.module_name(0) == info[0]["module"] and info.channels(-1) == maps[-1].shape[1]
    for got, want in zip(last_two, maps[-2:]):
        torch.testing.assert_close(got, want)
    torch.testing.assert_close(final, model.forward_features(X))
    features = mobilenets.create_model(name, features_only=True).eval()
    features.load_state_dict({k: v for k, v in model.state_dict().items() if k in features.state_dict()})
    with torch.no_grad():
        for got, want in zip(features(X), maps):
            torch.testing.assert_close(got, want)


def test_global_pool_and_reset_classifier():
    model = mobilenets.create_model("mobilenet_v2_050", global_pool="max", num_classes=0).eval()
    with torch.no_grad():
        fmap = model.forward_features(X)
        torch.testing.assert_close(model(X), fmap.amax(dim=(2, 3)))
        model.reset_classifier(0, global_pool="avgmax")
        torch.testing.assert_close(model(X), 0.5 * (fmap.amax(dim=(2, 3)) + fmap.mean(dim=(2, 3))))
        model.reset_classifier(0, global_pool="")
        torch.testing.assert_close(model(X), fmap)
        model.reset_classifier(7, global_pool="avg")
        assert model(X).shape == (2, 7)
    with pytest.raises(MobileNetsError, match="global_pool="):
        mobilenets.create_model("mobilenet_v2", global_pool="mean")
    with pytest.raises(MobileNetsError, match="unpooled"):
        mobilenets.create_model("mobilenet_v3_small", global_pool="", num_classes=0)


def test_grad_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    model = mobilenets.create_model("mobilenet_v3_small_050", num_classes=3).train()
    model.dropout.p = 0.0

    def grads():
        model.zero_grad()
        torch.manual_seed(1)
        model(X).square().sum().backward()
        return [p.grad.clone() for p in model.parameters()]

    state = {k: v.clone() for k, v in model.state_dict().items()}
    plain = grads()
    model.load_state_dict(state)  # BN statistics moved: the same start for the second pass
    model.set_grad_checkpointing()
    for got, want in zip(grads(), plain):
        torch.testing.assert_close(got, want)


def test_torch_hub_local_entry_point():
    repo = Path(__file__).resolve().parents[2]
    model = torch.hub.load(str(repo), "mobilenet_v3_large", source="local", num_classes=4)
    assert model.classifier.out_features == 4


def test_fx_feature_extractor_scripts():
    from torchvision.models.feature_extraction import create_feature_extractor
    model = mobilenets.create_model("mobilenet_v4_hybrid_medium").eval()
    extractor = create_feature_extractor(model, {"blocks.3": "mid", "last_conv": "last"})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scripted = torch.jit.script(extractor)
    with torch.no_grad():
        want = extractor(X)
        got = scripted(X)
        torch.testing.assert_close(want["last"], model.forward_features(X))
    for key in want:
        torch.testing.assert_close(got[key], want[key])
