"""The papers' published cost figures beside ours: the data behind docs/paper_tables.md and the
tests that hold the models to the papers.

A published figure "matches" when our exact count, rounded or truncated to the published digit,
gives the published figure: the papers do both (V2 1.0 has 3.47M parameters, printed as 3.4M;
V1 has 568.7M multiply-adds, printed as 569M). V4 prints binary units: its "G" MACs are 2^30 and
its "M" parameters 2^20 (without batch norm, as V1-V3); read so, nine of its ten figures match.
"""
from __future__ import annotations

from dataclasses import dataclass
from ..models.profile import profile
from . import paper_settings, paper_v3
from .rounding import matches


@dataclass(frozen=True)
class Figure:
    source: str          # where it is printed
    model: str           # registered model name
    resolution: int
    metric: str          # "madds" (millions), "params" (millions, without BN), "memory" (K = 1000 B)
    published: str       # as printed, e.g. "4.2"
    note: str = ""       # why the paper and the reference code disagree, where they do
    unit: str = ""       # where not the metric's own (M, M, K): "Gi" = 2^30, "Mi" = 2^20 (V4)


def _fig(source, model, res, madds, params):
    return [Figure(source, model, res, "madds", madds), Figure(source, model, res, "params", params)]


def _v4_fig(model, res, gmacs, params, params_note=""):
    """V4's ImageNet table: MACs in G and parameters in M, both binary (see the module note)."""
    return [Figure("V4 ImageNet table", model, res, "madds", gmacs, unit="Gi"),
            Figure("V4 ImageNet table", model, res, "params", params, params_note, unit="Mi")]


FIGURES: list[Figure] = [
    *_fig("V1 Table 6", "mobilenet_v1", 224, "569", "4.2"),
    *_fig("V1 Table 6", "mobilenet_v1_075", 224, "325", "2.6"),
    *_fig("V1 Table 6", "mobilenet_v1_050", 224, "149", "1.3"),
    *_fig("V1 Table 6", "mobilenet_v1_025", 224, "41", "0.5"),
    *_fig("V1 Table 7", "mobilenet_v1", 192, "418", "4.2"),
    *_fig("V1 Table 7", "mobilenet_v1", 160, "290", "4.2"),
    *_fig("V1 Table 7", "mobilenet_v1", 128, "186", "4.2"),
    *_fig("V2 Table 4", "mobilenet_v2", 224, "300", "3.4"),
    Figure("V2 Table 4", "mobilenet_v2_140", 224, "madds", "585",
           "the reference code's README gives 582M for 1.4, as we count"),
    Figure("V2 Table 4", "mobilenet_v2_140", 224, "params", "6.9",
           "the reference code's README gives 6.06M for 1.4, as we count"),
    Figure("V2 reference README", "mobilenet_v2_140", 224, "madds", "582"),
    Figure("V2 reference README", "mobilenet_v2_140", 224, "params", "6.06"),
    Figure("V2 Table 3", "mobilenet_v1", 224, "memory", "1600"),
    Figure("V2 Table 3", "mobilenet_v2", 224, "memory", "400"),
    *_fig("V3 Table 3", "mobilenet_v2_035", 224, "59.2", "1.6"),
    Figure("V3 Table 3", "mobilenet_v3_large", 224, "madds", "219",
           "the reference code's README gives 217M, as we count"),
    Figure("V3 reference README", "mobilenet_v3_large", 224, "madds", "217"),
    Figure("V3 Table 3", "mobilenet_v3_large", 224, "params", "5.4"),
    *_fig("V3 Table 3", "mobilenet_v3_large_075", 224, "155", "4.0"),
    *_fig("V3 Table 3", "mobilenet_v3_small", 224, "56", "2.5"),
    Figure("V3 Table 3", "mobilenet_v3_small_075", 224, "madds", "44",
           "44M is the first arXiv revision's figure, counted on a V3-Small whose last layer "
           "is 1280 wide (43.8M, `head_channels=1280`), kept when the parameters were updated to "
           "the 1024-wide layer (2.0M); the 1024-wide model has 43.4M (see V3 Table 9 below)"),
    Figure("V3 Table 3", "mobilenet_v3_small_075", 224, "params", "2.0"),
    *_v4_fig("mobilenet_v4_conv_small", 224, "0.2", "3.8",
             "3.8 is Conv-S's decimal count with batch norm (3,774,024); in the binary units of "
             "the other V4 rows, without BN, it has 3.575"),
    *_v4_fig("mobilenet_v4_conv_medium", 256, "1.0", "9.2"),
    *_v4_fig("mobilenet_v4_conv_large", 384, "5.9", "31"),
    *_v4_fig("mobilenet_v4_hybrid_medium", 256, "1.2", "10.5"),
    *_v4_fig("mobilenet_v4_hybrid_large", 384, "7.2", "35.9"),
]

# Exact counts of the reference architectures in PyTorch (params with BN, without BN, MAdds).
REFERENCE_COUNTS = {
    "mobilenet_v1": (4_231_976, 4_210_088, 568_740_352),
    "mobilenet_v2": (3_504_872, 3_470_760, 300_774_272),
    "mobilenet_v2_140": (6_108_776, 6_060_840, 582_195_824),
    "mobilenet_v3_large": (5_483_032, 5_458_632, 216_589_760),
    "mobilenet_v3_small": (2_542_856, 2_530_744, 56_510_400),
}

# timm 1.0.31's MobileNetV4 at its native input size: (resolution, params, params without BN,
# MAdds), the parameters counted on `timm.create_model(name)` and the multiply-adds by
# torch.utils.flop_counter.FlopCounterMode on it, halved (its convolutions, linear layers and
# attention matmuls). tests/test_v4.py recomputes them from timm for every registered V4 model.
TIMM_V4_COUNTS = {
    "mobilenet_v4_conv_small": (224, 3_774_024, 3_748_936, 186_005_568),
    "mobilenet_v4_conv_small_035": (224, 1_905_384, 1_894_696, 47_723_040),
    "mobilenet_v4_conv_small_050": (224, 2_238_952, 2_225_096, 64_741_408),
    "mobilenet_v4_conv_medium": (256, 9_715_512, 9_647_608, 1_080_244_224),
    "mobilenet_v4_conv_large": (384, 32_590_864, 32_441_312, 6_376_220_672),
    "mobilenet_v4_hybrid_medium": (256, 11_074_648, 10_998_808, 1_271_183_360),
    "mobilenet_v4_hybrid_medium_075": (224, 7_313_528, 7_255_688, 649_844_400),
    "mobilenet_v4_hybrid_large": (384, 37_764_624, 37_600_224, 7_711_877_120),
    "mobilenet_v4_hybrid_large_075": (256, 22_754_984, 22_630_904, 2_036_234_240),
}

_SCALE = {"madds": 1e6, "params": 1e6, "memory": 1e3}
_UNITS = {"Gi": 2.0 ** 30, "Mi": 2.0 ** 20}


def ours(fig: Figure, _cache: dict = {}) -> float:  # noqa: B006 (deliberate memo)
    """Our figure in the published unit."""
    key = (fig.model, fig.resolution)
    if key not in _cache:
        _cache[key] = profile(fig.model, fig.resolution)
    r = _cache[key]
    value = {"madds": r["madds"], "params": r["params_without_bn"],
             "memory": r["memory_table3_bytes_fp16"]}[fig.metric]
    return value / (_UNITS[fig.unit] if fig.unit else _SCALE[fig.metric])


def fig_matches(fig: Figure) -> bool:
    # Table 3 prints memory to two significant digits (1600K, 400K).
    return matches(ours(fig), fig.published, 100.0 if fig.metric == "memory" else None)


V4_NOTE = (
    "V4's convolutional blocks are the same inverted residual as V1-V3 with two more options.",
    "The universal inverted bottleneck (UIB) may put a depthwise conv (BN, no activation) before",
    "the 1×1 expansion and may drop the one after it; (start, middle) kernels (0, k), (k, 0),",
    "(k, k), (0, 0) give the paper's IB, ConvNext-like, ExtraDW and FFN blocks. The fused IB",
    "expands with a full 3×3/s2 conv instead. The hybrids add Mobile MQA blocks (batch norm, then",
    "attention whose heads share one key and one value projection; in the stride-16 stage keys and",
    "values are first downsampled by a 3×3/s2 depthwise conv) and a layer scale, 1e-5 at",
    "initialisation, on every UIB and attention block. MAdds count convolutions, linear layers and",
    "attention's two products, Q·Kᵀ and attention·V: heads · queries · keys · (key_dim +",
    "value_dim) per block. This equals torch's FLOP counter on timm's model, halved.",
    "",
)


def render_markdown() -> str:
    lines = [
        "# The papers' figures beside ours",
        "",
        "Generated by `mobilenets paper-tables --out docs/paper_tables.md`; the tests in",
        "`tests/test_paper.py` hold the models to every row marked ✓.",
        "",
        "Counting as the papers do: multiply-adds (MAdds) of convolutions and fully connected",
        "layers; parameters without batch norm; Table 3 memory is the largest tensor that must",
        "exist when expansions are computed in splits, 16-bit values, K = 1000 bytes. A figure",
        "matches when our exact count rounded or truncated to the published digit gives it.",
        "",
        "MobileNetV4 prints binary units: its G MACs are 2^30 multiply-adds and its M parameters",
        "2^20 (without batch norm), so the rows below read them as Gi and Mi. In decimal units our",
        "counts exceed the printed figures by 4.6-8.1% (Conv-L: 6.38G MAdds and 32.4M parameters",
        "without BN, printed 5.9G and 31M); in binary every figure but Conv-S's parameters",
        "matches. The hybrids' MACs include attention's two matrix products: without them",
        "Hybrid-M has 1.14 Gi (printed 1.2) and Hybrid-L 6.87 Gi (printed 7.2).",
        "",
        "| source | model | input | metric | published | ours | match |",
        "|---|---|---|---|---|---|---|",
    ]
    notes = []
    for fig in FIGURES:
        value = ours(fig)
        unit = fig.unit or {"madds": "M", "params": "M", "memory": "K"}[fig.metric]
        ok = fig_matches(fig)
        mark = "✓" if ok else f"✗ [{len(notes) + 1}]"
        if not ok:
            notes.append(fig.note)
        lines.append(f"| {fig.source} | `{fig.model}` | {fig.resolution} | {fig.metric} | "
                     f"{fig.published}{unit.rstrip('i')} | {value:.3f}{unit} | {mark} |")
    lines += ["", "Where the paper and its reference code disagree:", ""]
    lines += [f"{i}. {note}." for i, note in enumerate(notes, 1)]
    lines += ["", "## Exact counts of the reference implementations", "",
              "| model | params | params without BN | MAdds | ours equal |", "|---|---|---|---|---|"]
    for name, (p, pn, m) in REFERENCE_COUNTS.items():
        r = profile(name, 224)
        same = (r["params"], r["params_without_bn"], r["madds"]) == (p, pn, m)
        lines.append(f"| `{name}` | {p:,} | {pn:,} | {m:,} | {'✓' if same else '✗'} |")
    lines += ["", "## MobileNetV4: exact counts of timm's implementation", "", *V4_NOTE,
              "| model | input | params | params without BN | MAdds | attention MAdds "
              "| ours equal |",
              "|---|---|---|---|---|---|---|"]
    for name, (res, p, pn, m) in TIMM_V4_COUNTS.items():
        r = profile(name, res)
        attention = sum(layer["madds"] for layer in r["layers"] if layer["kind"] == "attention")
        same = (r["params"], r["params_without_bn"], r["madds"]) == (p, pn, m)
        lines.append(f"| `{name}` | {res} | {p:,} | {pn:,} | {m:,} | {attention:,} | "
                     f"{'✓' if same else '✗'} |")
    lines += ["", "## V2 Table 3: memory at each resolution (ours, fp16)", ""]
    for name in ("mobilenet_v1", "mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small"):
        rows = profile(name, 224)["memory_table3"]
        lines.append(f"- `{name}`: " + ", ".join(
            f"{r['size']} {r['channels']}ch {r['bytes_fp16'] / 1000:.0f}K" for r in rows))
    lines += ["", *paper_v3.render_markdown(), *paper_settings.render_markdown()]
    return "\n".join(lines) + "\n"
