"""The published ImageNet checkpoints that `create_model(name, pretrained=True)` can fetch, as data.

One `PretrainedWeights` per upstream file: where it lives (a URL, or a Hugging Face Hub repo),
what is known of its hash before download, which converter reads it (`convert.SOURCES`, with
timm's TensorFlow ports as "timm-tf"), the model options it needs, the preprocessing it was
trained with, and the upstream's published ImageNet-1k accuracy with where that figure comes from.

Sources of the figures:
- torchvision: `torchvision.models.*_Weights.*.meta["_metrics"]` and `meta["recipe"]`; the URL's
  file name carries the first 8 hex digits of the file's SHA-256 (torch.hub checks them).
- timm: `timm.models.get_pretrained_cfg(name)` (Hub id, input size, crop, interpolation,
  mean/std, licence) and timm's `results/results-imagenet.csv` (commit aa4b5850c154), the row at
  the checkpoint's own input size. The Hub gives each file's SHA-256 only at download (its ETag);
  it is checked against the downloaded bytes and keys the converted copy.
- Keras: `keras/src/applications/mobilenet*.py` (URLs; MD5 of the V3 files, WEIGHTS_HASHES). The
  V3 files' top-1 is the table in `mobilenet_v3.py`'s docstring (it gives no top-5); V1 and V2 at
  α 1.0 have top-1/top-5 in the table of keras.io/api/applications; other V1/V2 widths have none
  published by Keras and stay unknown.
"""
from __future__ import annotations

from dataclasses import dataclass, field

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HALF = (0.5, 0.5, 0.5)  # TF's [-1, 1] input scaling
TF_OPTIONS = {"padding": "same", "bn_eps": 1e-3}
TIMM_RESULTS = "timm results/results-imagenet.csv @ aa4b5850c154"


@dataclass(frozen=True)
class PretrainedWeights:
    model: str                 # our registered model name
    tag: str                   # the upstream's name for these weights
    source: str                # converter: torchvision, timm, timm-tf, keras
    url: str | None = None     # a plain download
    hf_hub_id: str | None = None
    hf_filename: str = "model.safetensors"
    hash_prefix: str | None = None  # leading hex digits of the file's SHA-256
    md5: str | None = None
    options: dict = field(default_factory=dict)  # model options beyond the name
    resolution: int = 224
    crop_pct: float = 0.875
    interpolation: str = "bilinear"
    mean: tuple = IMAGENET_MEAN
    std: tuple = IMAGENET_STD
    num_classes: int = 1000
    top1: float | None = None
    top5: float | None = None
    metrics_source: str | None = None
    license: str | None = None
    recipe: str | None = None

    @property
    def name(self) -> str:
        return f"{self.model}.{self.tag}"

    @property
    def location(self) -> str:
        """Where the file comes from: its URL, or the Hub's address of it."""
        return self.url or f"https://huggingface.co/{self.hf_hub_id}/resolve/main/{self.hf_filename}"

    @property
    def file_name(self) -> str:
        return self.url.rsplit("/", 1)[-1] if self.url else f"{self.hf_hub_id.replace('/', '--')}.safetensors"


_TV = "https://download.pytorch.org/models/"
_TV_LICENSE = "BSD-3-Clause (torchvision)"
_TV_V1_RECIPE = "https://github.com/pytorch/vision/tree/main/references/classification"
_TV_V2_RECIPE = "https://github.com/pytorch/vision/issues/3995#new-recipe-with-reg-tuning"


def _torchvision(model: str, tag: str, file: str, top1: float, top5: float, recipe: str,
                 **options) -> PretrainedWeights:
    return PretrainedWeights(model, tag, "torchvision", url=_TV + file,
                             hash_prefix=file.rsplit("-", 1)[1].split(".")[0], options=options,
                             top1=top1, top5=top5, license=_TV_LICENSE, recipe=recipe,
                             metrics_source="torchvision weights meta['_metrics']")


def _timm(arch: str, tag: str, model: str, options: dict, res: int, crop: float, interp: str,
          mean: tuple, std: tuple, top: tuple) -> PretrainedWeights:
    source = "timm-tf" if arch.startswith("tf_") else "timm"
    base = dict(TF_OPTIONS) if source == "timm-tf" else {"bn_eps": 1e-5}
    if arch.startswith("mobilenetv1"):
        base["act"] = "relu6"
    options = {**base, **options}
    options.pop("resolution", None)
    return PretrainedWeights(model, f"{arch}.{tag}" if model != _TIMM_OWN.get(arch) else tag,
                             source, hf_hub_id=f"timm/{arch}.{tag}", options=options,
                             resolution=res, crop_pct=crop, interpolation=interp, mean=mean,
                             std=std, top1=top[0], top5=top[1],
                             metrics_source=TIMM_RESULTS if top[0] is not None else None,
                             license="apache-2.0", recipe=f"timm {arch}.{tag}")


# timm names whose architecture our model name states exactly: their tags are timm's own
# (mobilenet_v4_conv_small.e2400_r224_in1k); the others keep timm's model name in the tag
# (mobilenet_v3_large.tf_mobilenetv3_large_100.in1k) so that one name never means two files.
_TIMM_OWN = {
    "mobilenetv2_050": "mobilenet_v2_050", "mobilenetv2_100": "mobilenet_v2",
    "mobilenetv2_140": "mobilenet_v2_140", "mobilenetv3_small_050": "mobilenet_v3_small_050",
    "mobilenetv3_small_075": "mobilenet_v3_small_075", "mobilenetv3_small_100": "mobilenet_v3_small",
    "mobilenetv3_large_100": "mobilenet_v3_large", "mobilenetv1_100": "mobilenet_v1",
    "mobilenetv4_conv_small": "mobilenet_v4_conv_small",
    "mobilenetv4_conv_small_050": "mobilenet_v4_conv_small_050",
    "mobilenetv4_conv_medium": "mobilenet_v4_conv_medium",
    "mobilenetv4_conv_large": "mobilenet_v4_conv_large",
    "mobilenetv4_hybrid_medium": "mobilenet_v4_hybrid_medium",
    "mobilenetv4_hybrid_large": "mobilenet_v4_hybrid_large",
}

_KERAS = "https://storage.googleapis.com/tensorflow/keras-applications/"
_KERAS_LICENSE = "Apache-2.0 (Keras applications)"


_KERAS_V3_TABLE = "keras/src/applications/mobilenet_v3.py docstring table (top-1 only)"
_KERAS_APPLICATIONS_TABLE = "keras.io/api/applications table"


def _keras(model: str, path: str, md5: str | None = None, top=(None, None), source=None,
           **options) -> PretrainedWeights:
    family_options = {"act": "relu6"} if model.startswith("mobilenet_v1") else {}
    return PretrainedWeights(model, "keras_imagenet", "keras", url=_KERAS + path, md5=md5,
                             options={**TF_OPTIONS, **family_options, **options}, mean=HALF,
                             std=HALF, top1=top[0], top5=top[1], metrics_source=source,
                             license=_KERAS_LICENSE, recipe="keras.applications")


WEIGHTS: tuple[PretrainedWeights, ...] = (
    _torchvision("mobilenet_v2", "IMAGENET1K_V1", "mobilenet_v2-b0353104.pth", 71.878, 90.286,
                 _TV_V1_RECIPE + "#mobilenetv2", bn_eps=1e-5),
    _torchvision("mobilenet_v2", "IMAGENET1K_V2", "mobilenet_v2-7ebf99e0.pth", 72.154, 90.822,
                 _TV_V2_RECIPE, bn_eps=1e-5),
    _torchvision("mobilenet_v3_large", "IMAGENET1K_V1", "mobilenet_v3_large-8738ca79.pth", 74.042,
                 91.34, _TV_V1_RECIPE + "#mobilenetv3-large--small", bn_eps=1e-3),
    _torchvision("mobilenet_v3_large", "IMAGENET1K_V2", "mobilenet_v3_large-5c1a4163.pth", 75.274,
                 92.566, _TV_V2_RECIPE, bn_eps=1e-3),
    _torchvision("mobilenet_v3_small", "IMAGENET1K_V1", "mobilenet_v3_small-047dcff4.pth", 67.668,
                 87.402, _TV_V1_RECIPE + "#mobilenetv3-large--small", bn_eps=1e-3),
    _timm('mobilenetv1_100', 'ra4_e3600_r224_in1k', 'mobilenet_v1', {}, res=224, crop=0.875, interp='bicubic', mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), top=(75.388, 92.31)),
    _timm('mobilenetv1_125', 'ra4_e3600_r224_in1k', 'mobilenet_v1', {'width_mult': 1.25}, res=224, crop=0.9, interp='bicubic', mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), top=(76.92, 93.232)),
    _timm('mobilenetv2_050', 'lamb_in1k', 'mobilenet_v2_050', {}, res=224, crop=0.875, interp='bicubic', mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), top=(65.928, 86.114)),
    _timm('mobilenetv2_100', 'ra_in1k', 'mobilenet_v2', {}, res=224, crop=0.875, interp='bicubic', mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), top=(72.91, 91.0)),
    _timm('mobilenetv2_140', 'ra_in1k', 'mobilenet_v2_140', {}, res=224, crop=0.875, interp='bicubic', mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), top=(76.528, 93.008)),
    _timm('mobilenetv3_large_100', 'ra_in1k', 'mobilenet_v3_large', {}, res=224, crop=0.875, interp='bicubic', mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), top=(75.784, 92.528)),
    _timm('mobilenetv3_large_100', 'ra4_e3600_r224_in1k', 'mobilenet_v3_large', {}, res=224, crop=0.95, interp='bicubic', mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), top=(76.31, 92.842)),
    _timm('mobilenetv3_small_050', 'lamb_in1k', 'mobilenet_v3_small_050', {}, res=224, crop=0.875, interp='bicubic', mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), top=(57.918, 80.144)),
    _timm('mobilenetv3_small_075', 'lamb_in1k', 'mobilenet_v3_small_075', {}, res=224, crop=0.875, interp='bicubic', mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), top=(65.284, 85.462)),
    _timm('mobilenetv3_small_100', 'lamb_in1k', 'mobilenet_v3_small', {}, res=224, crop=0.875, interp='bicubic', mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), top=(67.636, 87.638)),
    _timm('tf_mobilenetv3_large_075', 'in1k', 'mobilenet_v3_large_075', {}, res=224, crop=0.875, interp='bilinear', mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), top=(73.442, 91.332)),
    _timm('tf_mobilenetv3_large_100', 'in1k', 'mobilenet_v3_large', {}, res=224, crop=0.875, interp='bilinear', mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), top=(75.51, 92.6)),
    _timm('tf_mobilenetv3_large_minimal_100', 'in1k', 'mobilenet_v3_large_minimal', {}, res=224, crop=0.875, interp='bilinear', mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), top=(72.27, 90.664)),
    _timm('tf_mobilenetv3_small_075', 'in1k', 'mobilenet_v3_small_075', {}, res=224, crop=0.875, interp='bilinear', mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), top=(65.706, 86.13)),
    _timm('tf_mobilenetv3_small_100', 'in1k', 'mobilenet_v3_small', {}, res=224, crop=0.875, interp='bilinear', mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), top=(67.922, 87.686)),
    _timm('tf_mobilenetv3_small_minimal_100', 'in1k', 'mobilenet_v3_small_minimal', {}, res=224, crop=0.875, interp='bilinear', mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), top=(62.892, 84.27)),
    _timm('mobilenetv4_conv_small', 'e2400_r224_in1k', 'mobilenet_v4_conv_small', {}, res=224, crop=0.875, interp='bicubic', mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), top=(73.756, 91.43)),
    _timm('mobilenetv4_conv_small', 'e1200_r224_in1k', 'mobilenet_v4_conv_small', {}, res=224, crop=0.875, interp='bicubic', mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), top=(73.45, 91.34)),
    _timm('mobilenetv4_conv_small', 'e3600_r256_in1k', 'mobilenet_v4_conv_small', {'resolution': 256}, res=256, crop=0.95, interp='bicubic', mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), top=(74.534, 91.94)),
    _timm('mobilenetv4_conv_small_050', 'e3000_r224_in1k', 'mobilenet_v4_conv_small_050', {}, res=224, crop=0.875, interp='bicubic', mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), top=(64.778, 85.5)),
    _timm('mobilenetv4_conv_medium', 'e500_r256_in1k', 'mobilenet_v4_conv_medium', {}, res=256, crop=0.95, interp='bicubic', mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), top=(79.916, 95.188)),
    _timm('mobilenetv4_conv_medium', 'e500_r224_in1k', 'mobilenet_v4_conv_medium', {'resolution': 224}, res=224, crop=0.95, interp='bicubic', mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), top=(79.092, 94.788)),
    _timm('mobilenetv4_conv_large', 'e600_r384_in1k', 'mobilenet_v4_conv_large', {}, res=384, crop=0.95, interp='bicubic', mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), top=(82.974, 96.244)),
    _timm('mobilenetv4_conv_large', 'e500_r256_in1k', 'mobilenet_v4_conv_large', {'resolution': 256}, res=256, crop=0.95, interp='bicubic', mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), top=(81.864, 95.696)),
    _timm('mobilenetv4_hybrid_medium', 'e500_r224_in1k', 'mobilenet_v4_hybrid_medium', {'resolution': 224}, res=224, crop=0.95, interp='bicubic', mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), top=(80.432, 95.378)),
    _timm('mobilenetv4_hybrid_large', 'e600_r384_in1k', 'mobilenet_v4_hybrid_large', {}, res=384, crop=0.95, interp='bicubic', mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), top=(83.826, 96.748)),
    _keras("mobilenet_v1", "mobilenet/mobilenet_1_0_224_tf.h5", top=(70.4, 89.5), source=_KERAS_APPLICATIONS_TABLE),
    _keras("mobilenet_v1_075", "mobilenet/mobilenet_7_5_224_tf.h5"),
    _keras("mobilenet_v1_050", "mobilenet/mobilenet_5_0_224_tf.h5"),
    _keras("mobilenet_v1_025", "mobilenet/mobilenet_2_5_224_tf.h5"),
    _keras("mobilenet_v2", "mobilenet_v2/mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224.h5",
           top=(71.3, 90.1), source=_KERAS_APPLICATIONS_TABLE),
    _keras("mobilenet_v2_140", "mobilenet_v2/mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.4_224.h5"),
    _keras("mobilenet_v2_075", "mobilenet_v2/mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.75_224.h5"),
    _keras("mobilenet_v2_050", "mobilenet_v2/mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.5_224.h5"),
    _keras("mobilenet_v2_035", "mobilenet_v2/mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224.h5"),
    _keras("mobilenet_v3_large", "mobilenet_v3/weights_mobilenet_v3_large_224_1.0_float.h5",
           md5="59e551e166be033d707958cf9e29a6a7", top=(75.6, None), source=_KERAS_V3_TABLE),
    _keras("mobilenet_v3_large_075", "mobilenet_v3/weights_mobilenet_v3_large_224_0.75_float.h5",
           md5="765b44a33ad4005b3ac83185abf1d0eb", top=(73.3, None), source=_KERAS_V3_TABLE),
    _keras("mobilenet_v3_large_minimal", "mobilenet_v3/weights_mobilenet_v3_large_minimalistic_224_1.0_float.h5",
           md5="675e7b876c45c57e9e63e6d90a36599c", top=(72.3, None), source=_KERAS_V3_TABLE),
    _keras("mobilenet_v3_small", "mobilenet_v3/weights_mobilenet_v3_small_224_1.0_float.h5",
           md5="8768d4c2e7dee89b9d02b2d03d65d862", top=(68.1, None), source=_KERAS_V3_TABLE),
    _keras("mobilenet_v3_small_075", "mobilenet_v3/weights_mobilenet_v3_small_224_0.75_float.h5",
           md5="cb65d4e5be93758266aa0a7f2c6708b7", top=(65.4, None), source=_KERAS_V3_TABLE),
    _keras("mobilenet_v3_small_minimal", "mobilenet_v3/weights_mobilenet_v3_small_minimalistic_224_1.0_float.h5",
           md5="99cd97fb2fcdad2bf028eb838de69e37", top=(61.9, None), source=_KERAS_V3_TABLE),
)

# The tag `pretrained=True` takes for a model name: the most accurate published tag at the
# model's own input size (torchvision's V2 recipes for V2/V3, timm's for V1 and V4).
DEFAULT_TAGS = {
    "mobilenet_v1": "ra4_e3600_r224_in1k",
    "mobilenet_v2": "IMAGENET1K_V2",
    "mobilenet_v3_large": "IMAGENET1K_V2",
    "mobilenet_v3_small": "IMAGENET1K_V1",
}


def by_name() -> dict[str, PretrainedWeights]:
    """{"model.tag": entry}."""
    return {w.name: w for w in WEIGHTS}


def default_for(model: str) -> PretrainedWeights | None:
    """The entry `pretrained=True` loads for `model`: DEFAULT_TAGS', else the first listed."""
    entries = [w for w in WEIGHTS if w.model == model]
    tag = DEFAULT_TAGS.get(model)
    return next((w for w in entries if w.tag == tag), entries[0] if entries else None)


def for_hub_id(repo_id: str) -> PretrainedWeights | None:
    return next((w for w in WEIGHTS if w.hf_hub_id == repo_id), None)
