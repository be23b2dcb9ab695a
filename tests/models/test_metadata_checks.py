"""A weights file's metadata is input like its tensors: model options are checked against the
tensor shapes in the file, and classes and preprocessing against that model and sane bounds,
before anything is sized by them; each refusal is one line naming the file, the key and what
is allowed."""
import copy

import pytest
import torch

from mobilenets import create_model
from mobilenets.core.errors import MobileNetsError
from mobilenets.models.mobilenet import load_model, load_pretrained
from mobilenets.models.weights import write_weights

pytestmark = pytest.mark.usefixtures("one_thread")

CLASSES = 10
# MobileNetV2 halves its input five times (V2 Table 2: the stem and four stages of stride 2),
# so no input below 2**5 = 32 pixels leaves a feature map.
V2_TOTAL_STRIDE = 2 ** 5
GOOD = {"format": "mobilenets/1", "model": "mobilenet_v2",
        "model_kwargs": {"width_mult": 0.35, "num_classes": CLASSES},
        "classes": [f"c{i}" for i in range(CLASSES)],
        "preprocessing": {"resolution": 64, "resize": 73, "mean": [0.5, 0.5, 0.5],
                          "std": [0.25, 0.25, 0.25], "in_chans": 3, "interpolation": "bicubic"}}


@pytest.fixture(scope="module")
def state():
    torch.manual_seed(0)
    return create_model("mobilenet_v2", width_mult=0.35, num_classes=CLASSES).state_dict()


@pytest.fixture
def forge(tmp_path, state):
    """forge(key=value, ...) → a weights file of real tensors whose metadata has those values
    ("preprocessing.x" and "model_kwargs.x" set one entry)."""
    def write(**changes):
        meta = copy.deepcopy(GOOD)
        for key, value in changes.items():
            outer, _, inner = key.partition("__")
            if inner:
                meta[outer][inner] = value
            else:
                meta[outer] = value
        path = tmp_path / "forged.safetensors"
        write_weights(path, state, meta)
        return path
    return write


@pytest.fixture
def no_large_layer(monkeypatch):
    """Fails at once if a Linear layer of over 10**7 weights is made on a real device: what a
    forged num_classes would allocate before this was checked (2e6 classes × 1280 = 10 GB)."""
    original = torch.nn.Linear.__init__

    def guarded(self, in_features, out_features, *args, **kwargs):
        device = kwargs.get("device") or torch.get_default_device()
        if in_features * out_features > 10**7 and torch.device(device).type != "meta":
            raise AssertionError(f"a {out_features}×{in_features} Linear was allocated")
        original(self, in_features, out_features, *args, **kwargs)
    monkeypatch.setattr(torch.nn.Linear, "__init__", guarded)


def refusal(excinfo, path) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg and msg.startswith(f"{path}: "), msg
    return msg


def test_the_unforged_file_loads(forge, state):
    model, meta = load_model(forge())
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    assert model.classes == GOOD["classes"] and model.pretrained_cfg["interpolation"] == "bicubic"


def test_forged_num_classes_is_refused_before_the_model_is_built(forge, no_large_layer):
    path = forge(model_kwargs__num_classes=2_000_000)
    with pytest.raises(MobileNetsError) as e:
        load_model(path)
    # The file's classifier is 10 × 1280: that, not the metadata, says what fits.
    assert refusal(e, path).endswith("allowed: metadata model_kwargs.num_classes=10 "
                                     "(its classifier.weight is (10, 1280))")
    # The same options reach create_model(pretrained=) as the file's saved options.
    with pytest.raises(MobileNetsError) as e:
        create_model("mobilenet_v2", pretrained=path)
    assert "metadata model_kwargs.num_classes=10" in refusal(e, path)


def test_forged_in_chans_is_refused(forge):
    path = forge(model_kwargs__in_chans=1000)
    with pytest.raises(MobileNetsError) as e:
        load_model(path)
    assert refusal(e, path).endswith("allowed: metadata model_kwargs.in_chans=3 "
                                     "(its stem.conv.weight is (16, 3, 3, 3))")


@pytest.mark.parametrize("key, value, allowed", [
    ("resolution", 10**7, f"an integer in [{V2_TOTAL_STRIDE}, 4096]"),
    ("resolution", V2_TOTAL_STRIDE - 1, f"an integer in [{V2_TOTAL_STRIDE}, 4096]"),
    ("resolution", 64.0, f"an integer in [{V2_TOTAL_STRIDE}, 4096]"),
    ("resize", 10**6, "an integer in [64, 128] (resolution to 2 × resolution)"),
    ("interpolation", "lanczos", "one of bilinear, bicubic, nearest"),
    ("in_chans", 1, "3, the model's input channels"),
    ("mean", [0.5], "a list of 3 finite numbers"),
    ("mean", [float("nan")] * 3, "a list of 3 finite numbers"),
    ("std", [0.25, 0.0, 0.25], "a list of 3 finite numbers above 0"),
    ("std", "0.25", "a list of 3 finite numbers above 0"),
])
def test_preprocessing_out_of_bounds_is_refused(forge, key, value, allowed):
    path = forge(**{f"preprocessing__{key}": value})
    with pytest.raises(MobileNetsError) as e:
        load_model(path)
    assert refusal(e, path) == (f"{path}: metadata preprocessing.{key}={value!r} is refused; "
                                f"allowed: {allowed}")


def test_the_bounds_themselves_are_allowed(forge):
    for resolution in (V2_TOTAL_STRIDE, 4096):
        pre = {"resolution": resolution, "resize": 2 * resolution, "in_chans": 3}
        model, _ = load_model(forge(preprocessing=pre))
        assert model.pretrained_cfg["resolution"] == resolution


def test_classes_must_name_every_output(forge):
    for classes in (["a", "b", "c"], [f"c{i}" for i in range(CLASSES + 1)]):
        path = forge(classes=classes)
        with pytest.raises(MobileNetsError) as e:
            load_model(path)
        assert refusal(e, path) == (f"{path}: metadata classes has {len(classes)} names for a model "
                                    f"with {CLASSES} outputs; allowed: exactly {CLASSES} names")
    path = forge(classes="c0 c1")
    with pytest.raises(MobileNetsError, match="metadata classes='c0 c1' is not a list of names"):
        load_model(path)


def test_load_pretrained_checks_against_the_model_it_fills(forge):
    path = forge(classes=["a"])
    model = create_model("mobilenet_v2", width_mult=0.35, num_classes=CLASSES)
    with pytest.raises(MobileNetsError) as e:
        load_pretrained(model, path)
    assert "allowed: exactly 10 names" in refusal(e, path)


def test_model_options_that_are_not_options_are_refused(forge, tmp_path):
    # A file that names other weights would have loading fetch any path or URL.
    url = "http://127.0.0.1:9/other.safetensors"
    path = forge(model_kwargs__pretrained=url)
    with pytest.raises(MobileNetsError) as e:
        load_model(path)
    assert "metadata model_kwargs names pretrained" in refusal(e, path)
    for key, value, words in (("model_kwargs__width_mult", "wide", "width_mult='wide'"),
                              ("model_kwargs__colour", "red", "does not take colour"),
                              ("model_kwargs", [1, 2], "metadata model_kwargs is list"),
                              ("model", ["mobilenet_v2"], "metadata model=['mobilenet_v2'] is refused"),
                              ("model", "mobilenet_v9", "metadata model: unknown model 'mobilenet_v9'")):
        path = forge(**{key: value})
        with pytest.raises(MobileNetsError) as e:
            load_model(path)
        assert words in refusal(e, path), key
