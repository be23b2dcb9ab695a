"""Converted weights reproduce their source: each source model gets random weights and random
batch-norm statistics, is saved in its own format, converted, and must give the same logits on
the same input (max abs difference <= 1e-4, fp32)."""
import os
import re

os.environ.setdefault("KERAS_BACKEND", "torch")  # before anything imports keras

import numpy as np
import pytest
import torch

from mobilenets import create_model, fuse
from mobilenets.cli import main
from mobilenets.models.convert import KERAS, convert, convert_file, normalise_keras_name, rename_layers
from mobilenets.core.errors import MobileNetsError
from mobilenets.models.mobilenet import load_model
from mobilenets.models.weights import load_weights

TOL = 1e-4
# Folding batch norm into the conv (`mobilenets.fuse`, the inference form) re-rounds every layer;
# in these random networks that alone moves logits by up to ~1.3e-4 at LOGIT_SCALE (measured
# over seeds), so the fused model is held to a looser bound and the conversion itself to TOL.
FOLDED_TOL = 5e-4
# fp32 rounding alone moves these logits by about 1e-5 of their size: a timm source scaled to
# logits of 10 differs from its own float64 run by 6e-5 to 9e-5, and any reordering of the sums
# (batch norm folded into the conv, Keras' NHWC kernels) by as much. Sources'
# classifiers are scaled so logits peak at 2, where rounding stays near 2e-5 and TOL measures
# the conversion rather than the arithmetic.
LOGIT_SCALE = 2.0
SIZE = 64  # even, so TF "same" padding is one-sided at every stride-2 layer


# tiny forward passes: one thread (fixture in conftest.py)
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def seeded():
    torch.manual_seed(0)  # source models draw their weights from the global generator


@pytest.fixture(scope="module")
def images():
    return torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))


def calibration_batch() -> torch.Tensor:
    return torch.randn(4, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(3))


def randomize_bn(model: torch.nn.Module) -> torch.nn.Module:
    """Random BN affine parameters and statistics that keep a signal flowing.

    Statistics drawn independently of the activations make every BN output a near-constant,
    so logits would not depend on the early layers at all; instead they are measured on a
    calibration batch, then perturbed.
    """
    g = torch.Generator().manual_seed(1)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    with torch.no_grad():
        for m in bns:
            m.weight.copy_(1 + 0.2 * torch.randn(m.num_features, generator=g))
            m.bias.copy_(0.2 * torch.randn(m.num_features, generator=g))
            m.reset_running_stats()
            m.momentum = None  # cumulative average: the stats of exactly this batch
        model.train()(calibration_batch())
        for m in bns:
            m.momentum = 0.1
            n = m.num_features
            m.running_mean.add_(0.1 * m.running_var.sqrt() * torch.randn(n, generator=g))
            m.running_var.mul_(0.8 + 0.4 * torch.rand(n, generator=g))
        model.eval()
        classifier = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
        scale = LOGIT_SCALE / model(calibration_batch()).abs().max().item()
        classifier.weight.mul_(scale)
        classifier.bias.mul_(scale)
    return model


def assert_same(reference: torch.Tensor, model, images):
    # the comparison means something only if the logits depend on the input
    assert (reference[0] - reference[1]).abs().max() > 0.1
    with torch.no_grad():
        unfolded = model(images)
        folded = fuse(model)(images)
    assert unfolded.shape == reference.shape
    diff = (unfolded - reference).abs().max().item()
    assert diff <= TOL, diff
    diff = (folded - reference).abs().max().item()
    assert diff <= FOLDED_TOL, diff


# --- torchvision ------------------------------------------------------------------------------

TORCHVISION_CASES = [
    ("mobilenet_v2", {}, "mobilenet_v2", {}),
    ("mobilenet_v2", {"width_mult": 0.75}, "mobilenet_v2_075", {}),
    ("mobilenet_v3_large", {}, "mobilenet_v3_large", {}),
    ("mobilenet_v3_small", {}, "mobilenet_v3_small", {}),
]


@pytest.mark.parametrize("tv_name,tv_kwargs,ours,ours_kwargs", TORCHVISION_CASES)
def test_torchvision(tmp_path, images, tv_name, tv_kwargs, ours, ours_kwargs):
    torchvision = pytest.importorskip("torchvision")
    source = randomize_bn(getattr(torchvision.models, tv_name)(**tv_kwargs))
    path = tmp_path / f"{tv_name}.pth"
    torch.save(source.state_dict(), path)
    with torch.no_grad():
        reference = source(images)
    assert_same(reference, convert("torchvision", path, ours, **ours_kwargs), images)


# --- timm -------------------------------------------------------------------------------------

TIMM_CASES = [
    ("mobilenetv1_100", "mobilenet_v1", {}),
    ("mobilenetv1_125", "mobilenet_v1", {"width_mult": 1.25}),
    ("mobilenetv2_035", "mobilenet_v2_035", {}),
    ("mobilenetv2_100", "mobilenet_v2", {}),
    ("mobilenetv2_075", "mobilenet_v2", {"width_mult": 0.75}),
    ("mobilenetv2_140", "mobilenet_v2", {"width_mult": 1.4}),
    ("mobilenetv3_large_100", "mobilenet_v3_large", {}),
    ("mobilenetv3_large_075", "mobilenet_v3_large", {"width_mult": 0.75}),
    ("mobilenetv3_small_100", "mobilenet_v3_small", {}),
    ("mobilenetv3_small_075", "mobilenet_v3_small_075", {}),
    ("mobilenetv3_small_050", "mobilenet_v3_small", {"width_mult": 0.5}),  # 16-channel stem
    ("tf_mobilenetv3_large_100", "mobilenet_v3_large", {}),
    ("tf_mobilenetv3_large_075", "mobilenet_v3_large", {"width_mult": 0.75}),
    ("tf_mobilenetv3_small_075", "mobilenet_v3_small", {"width_mult": 0.75}),
    ("tf_mobilenetv3_large_minimal_100", "mobilenet_v3_large_minimal", {}),
    ("tf_mobilenetv3_small_minimal_100", "mobilenet_v3_small", {"minimalistic": True}),
]


@pytest.mark.parametrize("timm_name,ours,ours_kwargs", TIMM_CASES)
def test_timm(tmp_path, images, timm_name, ours, ours_kwargs):
    timm = pytest.importorskip("timm")
    from safetensors.torch import save_file
    source = randomize_bn(timm.create_model(timm_name))
    # timm's hub files are model.safetensors inside a folder named after the model
    path = tmp_path / timm_name / "model.safetensors"
    path.parent.mkdir()
    save_file(source.state_dict(), str(path))
    with torch.no_grad():
        reference = source(images)
    model = convert("timm", path, ours, **ours_kwargs)
    assert model.model_kwargs.get("padding") == ("same" if timm_name.startswith("tf_") else None)
    assert_same(reference, model, images)


TIMM_V4_CASES = [
    ("mobilenetv4_conv_small", "mobilenet_v4_conv_small", {}),
    ("mobilenetv4_conv_small_050", "mobilenet_v4_conv_small_050", {}),  # stem kept at 32
    ("mobilenetv4_conv_medium", "mobilenet_v4_conv_medium", {}),
    ("mobilenetv4_hybrid_medium", "mobilenet_v4_hybrid_medium", {}),
    ("mobilenetv4_hybrid_large_075", "mobilenet_v4_hybrid_large", {"width_mult": 0.75}),  # GELU
]


def condition_v4(model: torch.nn.Module) -> torch.nn.Module:
    """Random V4 weights that make the comparison mean something at fp32.

    Layer scale starts at 1e-5, which would hide every UIB and attention branch of a hybrid from
    the logits: it is drawn from [0.1, 0.3] instead. Random query projections make attention
    logits large and the softmax nearly one-hot, where fp32 rounding is amplified (timm's own
    fp32 logits were 2e-3 from its fp64 ones): queries are scaled by 0.05 to keep it soft.
    """
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("layer_scale.gamma"):
                p.copy_(0.1 + 0.2 * torch.rand(p.shape, generator=g))
            elif name.endswith("attn.query.proj.weight"):
                p.mul_(0.05)
    return model


@pytest.mark.parametrize("timm_name,ours,ours_kwargs", TIMM_V4_CASES)
def test_timm_v4(tmp_path, images, timm_name, ours, ours_kwargs):
    timm = pytest.importorskip("timm")
    from safetensors.torch import save_file
    source = randomize_bn(condition_v4(timm.create_model(timm_name)))
    path = tmp_path / timm_name / "model.safetensors"
    path.parent.mkdir()
    save_file(source.state_dict(), str(path))
    with torch.no_grad():
        reference = source(images)
    assert_same(reference, convert("timm", path, ours, **ours_kwargs), images)


def test_cli_convert_v4_records_the_native_resolution(tmp_path, images):
    timm = pytest.importorskip("timm")
    from safetensors.torch import save_file
    source = randomize_bn(condition_v4(timm.create_model("mobilenetv4_conv_medium")))
    src = tmp_path / "mobilenetv4_conv_medium" / "model.safetensors"
    src.parent.mkdir()
    save_file(source.state_dict(), str(src))
    out = tmp_path / "v4m.safetensors"
    assert main(["convert", "--from", "timm", str(src), "--model", "mobilenet_v4_conv_medium",
                 "--out", str(out)]) == 0
    model, meta = load_model(out)
    assert meta["preprocessing"]["resolution"] == source.pretrained_cfg["input_size"][-1] == 256
    with torch.no_grad():
        assert_same(source(images), model.eval(), images)


# --- Keras applications (Keras 3 on its torch backend) ----------------------------------------

KERAS_CASES = [
    ("MobileNet", {"alpha": 1.0}, "mobilenet_v1", {}, ".weights.h5"),
    ("MobileNet", {"alpha": 0.5}, "mobilenet_v1_050", {}, ".h5"),
    ("MobileNet", {"alpha": 0.25}, "mobilenet_v1_025", {}, ".weights.h5"),
    ("MobileNetV2", {"alpha": 1.0}, "mobilenet_v2", {}, ".h5"),
    ("MobileNetV2", {"alpha": 0.75}, "mobilenet_v2", {"width_mult": 0.75}, ".weights.h5"),
    ("MobileNetV2", {"alpha": 1.4}, "mobilenet_v2_140", {}, ".h5"),
    ("MobileNetV2", {"alpha": 0.35}, "mobilenet_v2_035", {}, ".weights.h5"),
    ("MobileNetV2", {"alpha": 1.3}, "mobilenet_v2_130", {}, ".h5"),
    ("MobileNetV3Large", {"alpha": 1.0}, "mobilenet_v3_large", {}, ".weights.h5"),
    ("MobileNetV3Large", {"alpha": 0.75}, "mobilenet_v3_large", {"width_mult": 0.75}, ".h5"),
    ("MobileNetV3Small", {"alpha": 1.0}, "mobilenet_v3_small", {}, ".h5"),
    ("MobileNetV3Small", {"alpha": 0.75}, "mobilenet_v3_small_075", {}, ".weights.h5"),
    ("MobileNetV3Large", {"minimalistic": True}, "mobilenet_v3_large_minimal", {}, ".weights.h5"),
    ("MobileNetV3Small", {"minimalistic": True}, "mobilenet_v3_small", {"minimalistic": True}, ".h5"),
]


def keras_model(cls: str, kwargs: dict):
    keras = pytest.importorskip("keras")
    if keras.backend.backend() != "torch":
        pytest.skip("keras runs on another backend in this process")
    if "V3" in cls:
        kwargs = {**kwargs, "include_preprocessing": False}  # compare raw [-1, 1] inputs
    keras.utils.set_random_seed(0)
    model = getattr(keras.applications, cls)(input_shape=(SIZE, SIZE, 3), weights=None,
                                             classifier_activation=None, **kwargs)
    rng = np.random.default_rng(2)
    bns = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    for layer in bns:  # as randomize_bn: random affine, statistics measured then perturbed
        n = layer.get_weights()[0].shape
        layer.set_weights([rng.normal(1, 0.2, n), rng.normal(0, 0.2, n), np.zeros(n), np.ones(n)])
        layer.momentum = 0.0
    model(calibration_batch().permute(0, 2, 3, 1).numpy(), training=True)
    for layer in bns:
        gamma, beta, mean, var = layer.get_weights()
        layer.set_weights([gamma, beta, mean + 0.1 * np.sqrt(var) * rng.standard_normal(mean.shape),
                           var * rng.uniform(0.8, 1.2, var.shape)])
    classifier = [layer for layer in model.layers if layer.weights][-1]
    x = calibration_batch().permute(0, 2, 3, 1).numpy()
    scale = LOGIT_SCALE / float(np.abs(keras.ops.convert_to_numpy(model(x, training=False))).max())
    classifier.set_weights([w * scale for w in classifier.get_weights()])
    return model


def keras_logits(model, images):
    import keras
    x = images.permute(0, 2, 3, 1).numpy()
    return torch.from_numpy(np.asarray(keras.ops.convert_to_numpy(model(x, training=False))))


def save_keras(model, path):
    if path.name.endswith(".weights.h5"):
        model.save_weights(str(path))  # Keras 3 layout: layers/<object>/vars/<i>
    else:
        model.save(str(path))  # legacy HDF5 layout: layer_names / weight_names attributes


@pytest.mark.slow
@pytest.mark.parametrize("cls,kwargs,ours,ours_kwargs,suffix", KERAS_CASES)
def test_keras(tmp_path, images, cls, kwargs, ours, ours_kwargs, suffix):
    source = keras_model(cls, kwargs)
    path = tmp_path / f"{cls}{suffix}"
    save_keras(source, path)
    model = convert("keras", path, ours, **ours_kwargs)
    assert model.model_kwargs["padding"] == "same" and model.model_kwargs["bn_eps"] == 1e-3
    assert_same(keras_logits(source, images), model, images)


@pytest.mark.slow
def test_keras_weights_need_tf_padding(tmp_path, images):
    """The check above can fail: the same weights with PyTorch padding are measurably off."""
    source = keras_model("MobileNetV2", {"alpha": 0.5})
    path = tmp_path / "v2.weights.h5"
    save_keras(source, path)
    model = convert("keras", path, "mobilenet_v2_050", padding="symmetric")
    with torch.no_grad():
        diff = (model(images) - keras_logits(source, images)).abs().max().item()
    assert diff > 100 * TOL


def keras2_name(name: str) -> str:
    """The name Keras 2 (tf.keras) gave a MobileNetV3 layer that Keras 3 calls `name`."""
    fixed = {"conv": "Conv", "conv_bn": "Conv/BatchNorm", "conv_1": "Conv_1",
             "conv_1_bn": "Conv_1/BatchNorm", "conv_2": "Conv_2", "logits": "Logits"}
    if name in fixed:
        return fixed[name]
    m = re.fullmatch(r"(expanded_conv(?:_\d+)?)_squeeze_excite_conv(_1)?", name)
    if m:
        return f"{m[1]}/squeeze_excite/Conv{m[2] or ''}"
    m = re.fullmatch(r"(expanded_conv(?:_\d+)?)_(expand|depthwise|project)(_bn)?", name)
    return f"{m[1]}/{m[2]}" + ("/BatchNorm" if m[3] else "")


@pytest.mark.slow
def test_keras2_application_file_layout(tmp_path, images):
    """The files Keras applications download (Keras 2 era): weights only, layer_names at the
    root, "/" in layer names, weight names such as "Conv/BatchNorm/gamma:0"."""
    h5py = pytest.importorskip("h5py")
    source = keras_model("MobileNetV3Small", {"alpha": 1.0})
    path = tmp_path / "weights_mobilenet_v3_small_224_1.0_float.h5"
    with h5py.File(path, "w") as f:
        layers = [layer for layer in source.layers if layer.weights]
        names = [keras2_name(layer.name) for layer in layers]
        f.attrs["layer_names"] = np.array([n.encode() for n in names])
        for layer, name in zip(layers, names):
            group = f.create_group(name)
            weight_names = [f"{name}/{w.name}:0" for w in layer.weights]
            group.attrs["weight_names"] = np.array([w.encode() for w in weight_names])
            for w, value in zip(weight_names, layer.get_weights()):
                group.create_dataset(w, data=value)
    assert "expanded_conv_3/squeeze_excite/Conv_1" in names
    assert_same(keras_logits(source, images), convert("keras", path, "mobilenet_v3_small"), images)


def test_keras2_layer_names_read_like_keras3():
    # names in the Keras 2 application files on storage.googleapis.com
    assert normalise_keras_name("expanded_conv/depthwise/BatchNorm") == "expanded_conv_depthwise_bn"
    assert normalise_keras_name("expanded_conv_3/squeeze_excite/Conv_1") == "expanded_conv_3_squeeze_excite_conv_1"
    assert normalise_keras_name("Conv/BatchNorm") == "conv_bn"
    assert normalise_keras_name("bn_Conv1") == "bn_conv1"
    assert normalise_keras_name("block_16_project_BN") == "block_16_project_bn"
    # keras_applications, which wrote the published MobileNetV2 files, called its classifier Logits
    renamed, unclaimed = rename_layers(["Conv_1", "logits"], KERAS["mobilenet_v2"], {}, "v2.h5")
    assert renamed == {"logits": "classifier"} and unclaimed == ["Conv_1"]


# --- the written file and the verb ------------------------------------------------------------

@pytest.mark.slow
def test_convert_file_metadata_and_reload(tmp_path, images):
    source = keras_model("MobileNetV3Small", {"alpha": 0.75})
    src = tmp_path / "small.h5"
    save_keras(source, src)
    out = tmp_path / "small.safetensors"
    convert_file("keras", src, out, "mobilenet_v3_small", width_mult=0.75, resolution=192)
    _, meta = load_weights(out)
    assert meta["model"] == "mobilenet_v3_small"
    assert meta["model_kwargs"] == {"padding": "same", "bn_eps": 1e-3, "width_mult": 0.75}
    assert len(meta["classes"]) == 1000 and meta["classes"][0] == "tench"
    pre = meta["preprocessing"]
    assert pre["mean"] == [0.5, 0.5, 0.5] and pre["std"] == [0.5, 0.5, 0.5]
    assert (pre["resolution"], pre["resize"], pre["in_chans"]) == (192, 219, 3)
    assert meta["source"]["framework"] == "keras" and len(meta["source"]["sha256"]) == 64

    reference = keras_logits(source, images)
    model, _ = load_model(out)
    assert_same(reference, model.eval(), images)
    # the name alone suffices: TF padding and BN eps come from the file
    model = create_model("mobilenet_v3_small", pretrained=str(out), width_mult=0.75).eval()
    assert model.model_kwargs["padding"] == "same"
    assert model.classes[1] == "goldfish" and model.pretrained_cfg["mean"] == [0.5, 0.5, 0.5]
    assert_same(reference, model, images)


def test_cli_convert(tmp_path, images, capsys):
    torchvision = pytest.importorskip("torchvision")
    source = randomize_bn(torchvision.models.mobilenet_v3_small())
    src = tmp_path / "mobilenet_v3_small-047dcff4.pth"
    torch.save(source.state_dict(), src)
    out = tmp_path / "v3s.safetensors"
    assert main(["convert", "--from", "torchvision", str(src), "--model", "mobilenet_v3_small",
                 "--out", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    model, meta = load_model(out)
    assert meta["preprocessing"]["mean"] == [0.485, 0.456, 0.406]
    with torch.no_grad():
        assert_same(source(images), model.eval(), images)

    # a checkpoint of another width: exit 2 and one line naming the misshaped tensors
    bad = tmp_path / "bad.safetensors"
    assert main(["convert", "--from", "torchvision", str(src), "--model", "mobilenet_v3_small",
                 "--width-mult", "0.75", "--out", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "wrong shape: " in err and "src" not in err
    assert not bad.exists()


def test_other_architecture_is_named(tmp_path):
    torchvision = pytest.importorskip("torchvision")
    src = tmp_path / "v2.pth"
    torch.save(torchvision.models.mobilenet_v2().state_dict(), src)
    with pytest.raises(MobileNetsError) as e:
        convert("torchvision", src, "mobilenet_v3_large")
    msg = str(e.value)
    assert "\n" not in msg and "v2.pth" in msg and "missing: " in msg
    with pytest.raises(MobileNetsError, match="torchvision has no mobilenet_v1"):
        convert("torchvision", src, "mobilenet_v1")


def test_not_a_keras_file(tmp_path):
    src = tmp_path / "x.h5"
    src.write_bytes(b"not hdf5 at all")
    with pytest.raises(MobileNetsError, match="not a readable HDF5 file"):
        convert("keras", src, "mobilenet_v2")
