"""What timm's own tools read from our models, checked with timm's functions."""
import pytest

import mobilenets
from mobilenets.cli import main

timm_data = pytest.importorskip("timm.data")


@pytest.mark.parametrize("name,kwargs,expected", [
    # the sizes timm's V4 weights were trained at (timm's pretrained cfgs: Conv-M 256, Conv-L 384)
    ("mobilenet_v4_conv_medium", {}, (3, 256, 256)),
    ("mobilenet_v4_conv_large", {}, (3, 384, 384)),
    ("mobilenet_v3_small", {"in_chans": 1}, (1, 224, 224)),
])
def test_resolve_data_config_reads_true_input_size(name, kwargs, expected):
    model = mobilenets.create_model(name, **kwargs)
    assert timm_data.resolve_data_config(model=model)["input_size"] == expected
    assert model.default_cfg is model.pretrained_cfg
    assert model.pretrained_cfg["pool_size"] == (expected[1] // 32,) * 2
    assert model.get_submodule(model.pretrained_cfg["first_conv"]).in_channels == expected[0]


def test_tagged_name_without_weights_takes_the_tags_input_size():
    model = mobilenets.create_model("mobilenet_v4_conv_medium.e500_r224_in1k")
    config = timm_data.resolve_data_config(model=model)
    # timm's cfg for this tag: 224 px, crop 0.95, bicubic
    assert (config["input_size"], config["crop_pct"], config["interpolation"]) == ((3, 224, 224), 0.95, "bicubic")


def test_list_models_filters():
    classifiers = mobilenets.list_models(task="classification")
    everything = mobilenets.list_models()
    assert set(classifiers) < set(everything)
    assert all(mobilenets.models.model_task(n) == "classification" for n in classifiers)
    assert "mobilenet_v3_small_minimal" not in mobilenets.list_models("mobilenet_v3_small*",
                                                                       exclude_filters="*minimal*")
    tags = mobilenets.list_models(pretrained=True)
    for tag in ("mobilenet_v4_conv_small.e2400_r224_in1k", "mobilenet_v4_conv_medium.e500_r256_in1k",
                "mobilenet_v4_conv_large.e600_r384_in1k", "mobilenet_v4_hybrid_medium.e500_r224_in1k",
                "mobilenet_v4_hybrid_large.e600_r384_in1k", "mobilenet_v2.IMAGENET1K_V1",
                "mobilenet_v2.IMAGENET1K_V2", "mobilenet_v3_large.IMAGENET1K_V1",
                "mobilenet_v3_large.IMAGENET1K_V2", "mobilenet_v3_small.IMAGENET1K_V1"):
        assert tag in tags


def test_registry_agrees_with_torchvision_and_timm():
    torchvision = pytest.importorskip("torchvision")
    timm = pytest.importorskip("timm")
    from mobilenets.models.registry_weights import WEIGHTS
    enums = {"mobilenet_v2": torchvision.models.MobileNet_V2_Weights,
             "mobilenet_v3_large": torchvision.models.MobileNet_V3_Large_Weights,
             "mobilenet_v3_small": torchvision.models.MobileNet_V3_Small_Weights}
    for w in WEIGHTS:
        if w.source == "torchvision":
            ref = enums[w.model][w.tag]
            assert (w.url, w.top1, w.top5) == (ref.url, ref.meta["_metrics"]["ImageNet-1K"]["acc@1"],
                                               ref.meta["_metrics"]["ImageNet-1K"]["acc@5"])
        elif w.hf_hub_id:
            cfg = timm.models.get_pretrained_cfg(w.hf_hub_id.split("/", 1)[1])
            assert (w.resolution, w.crop_pct, w.interpolation) == (cfg.input_size[1], cfg.crop_pct, cfg.interpolation)
            assert w.mean == pytest.approx(cfg.mean, abs=1e-4) and w.std == pytest.approx(cfg.std, abs=1e-4)


def test_registry_v3_keras_accuracy_is_the_table_in_keras_own_source():
    import importlib.util
    import re
    from pathlib import Path
    spec = importlib.util.find_spec("keras")
    if spec is None:
        pytest.skip("keras is not installed")
    source = (Path(spec.origin).parent / "src" / "applications" / "mobilenet_v3.py").read_text()
    rows = re.findall(r"\|\s*mobilenet_v3_(large|small)(_minimalistic)?_(1\.0|0\.75)_224\s*\|[^|]*\|[^|]*\|\s*([\d.]+)",
                      source)
    assert len(rows) == 6
    from mobilenets.models.registry_weights import WEIGHTS
    keras_v3 = {w.url.rsplit("/", 1)[1]: w.top1 for w in WEIGHTS if w.source == "keras" and "_v3" in w.model}
    assert keras_v3 == {f"weights_mobilenet_v3_{size}{minimal}_224_{alpha}_float.h5": float(top1)
                        for size, minimal, alpha, top1 in rows}


def test_cli_lists_pretrained_tags(capsys):
    assert main(["models", "--pretrained", "*v3_large*"]) == 0
    out = capsys.readouterr().out
    assert "mobilenet_v3_large.IMAGENET1K_V2" in out and "75.27" in out


def test_a_weights_files_resolution_reaches_resolve_data_config(tmp_path):
    from mobilenets.models.weights import save_weights
    model = mobilenets.create_model("mobilenet_v2_050", num_classes=10, in_chans=1, small_input=True)
    path = tmp_path / "fmnist.safetensors"
    save_weights(path, model, {"preprocessing": {"resolution": 28, "in_chans": 1,
                                                 "mean": [0.286], "std": [0.353]}})
    loaded, _ = mobilenets.load_model(path)
    assert timm_data.resolve_data_config(model=loaded)["input_size"] == (1, 28, 28)
