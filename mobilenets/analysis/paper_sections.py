"""Sections of docs/paper_tables.md beyond the figure-by-figure table of `paper.py`: V1 Tables
3-5 (each step from a standard convolution to MobileNet, full convolutions, shallow vs narrow),
V2 Table 3 row by row in both of its printed revisions, V2 Table 7's MobileNetV1 rows, and where
accuracy falls as multiply-adds rise in the reference code's α × ρ tables.

Every "ours" figure is counted here, on the registered models, when the document is rendered.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..models.heads import MF_SCALES, DeepLabV3, reference_madds
from ..models.profile import count_params, profile
from ..models.tables import V1_BLOCKS, V1_CHECKPOINTS, V2_CHECKPOINTS
from .paper import matches, render_markdown
from .tradeoff import accuracy_inversions

# V1 Table 3's example layer is the first of the five separable layers at 14×14×512 (Table 1).
TABLE3_LAYER = f"blocks.{V1_BLOCKS.index((1, 512))}."


@dataclass(frozen=True)
class LayerRow:
    """One row of V1 Table 3: the example layer inside a whole model, cumulative changes."""
    change: str
    model: str
    resolution: int
    madds: str      # published, millions
    params: str     # published, millions


V1_TABLE3 = (
    LayerRow("Convolution (full 3×3)", "mobilenet_v1_full_conv", 224, "462", "2.36"),
    LayerRow("Depthwise separable conv", "mobilenet_v1", 224, "52.3", "0.27"),
    LayerRow("α = 0.75", "mobilenet_v1_075", 224, "29.6", "0.15"),
    LayerRow("ρ = 0.714 (160 px)", "mobilenet_v1_075", 160, "15.1", "0.15"),
)

# V1 Tables 4 and 5: whole models, (table, label, model, published MAdds M, published params M).
V1_TABLES_4_5 = (
    ("Table 4", "Conv MobileNet", "mobilenet_v1_full_conv", "4866", "29.3"),
    ("Table 4", "MobileNet", "mobilenet_v1", "569", "4.2"),
    ("Table 5", "0.75 MobileNet (narrow)", "mobilenet_v1_075", "325", "2.6"),
    ("Table 5", "Shallow MobileNet", "mobilenet_v1_shallow", "307", "2.9"),
)
TABLE4_NOTE = (
    "Conv MobileNet: we count 4867.3M, of which the 1000-way fully connected layer is 1.0M; "
    "without it the count is 4866.3M, the printed 4866M. The paper's 569M for MobileNet includes "
    "that layer (567.7M without it), so Table 4 seems to have left it out of this one row. The "
    "29.3M parameters include it (28.26M without).")

# V2 Table 3 as printed in the arXiv revision (v4): size → (channels, K = 1000 bytes at 16 bits).
V2_TABLE3_PRINTED = {
    "mobilenet_v1": {"112x112": (64, "1600"), "56x56": (128, "800"), "28x28": (256, "400"),
                     "14x14": (512, "200"), "7x7": (1024, "199"), "1x1": (1024, "2")},
    "mobilenet_v2": {"112x112": (16, "400"), "56x56": (32, "200"), "28x28": (64, "100"),
                     "14x14": (160, "62"), "7x7": (320, "32"), "1x1": (1280, "2")},
}
_STRIDE2_READING = (
    "the printed width is Table 2's c of the stride-2 row whose input is at this size ({row}); "
    "that block's output lives at half the size, where we count it. Ours is the widest tensor "
    "that must exist whole at this size. The printed K is the printed width at this size ({check})")
V2_TABLE3_NOTES = {
    ("mobilenet_v2", "56x56"): _STRIDE2_READING.format(
        row="56²×24 → 32, s 2", check="32·56²·2 B = 200.7K"),
    ("mobilenet_v2", "28x28"): _STRIDE2_READING.format(
        row="28²×32 → 64, s 2", check="64·28²·2 B = 100.4K"),
    ("mobilenet_v2", "14x14"): _STRIDE2_READING.format(
        row="14²×96 → 160, s 2", check="160·14²·2 B = 62.7K"),
    ("mobilenet_v2", "7x7"): "the channels agree; 320·7²·2 B is 31.4K, printed rounded up to 32K",
    ("mobilenet_v1", "7x7"): (
        "the channels agree; 1024·7²·2 B is 100.4K, while the printed 199K is about twice that "
        "(a 7×7×1024 map in 32-bit values, or the last depthwise conv's input and output together, "
        "are 200.7K). The printed pair disagrees with the table's own rule, so we keep 100K"),
}
V2_TABLE3_STRIDE2_AT_112 = (
    "The stride-2 reading is not applied at 112×112: there the row 112²×16 → 24, s 2 would give "
    "24 channels (602K), and the paper prints 16 (400K), the widest tensor that must exist whole "
    "at that size once the stem's output is split, as we count.")

# The maxima of both printed revisions (K = 1000): arXiv v4, and the CVPR version, which halves
# them and marks the 112×112 row as needing O(1) memory.
V2_TABLE3_MAXIMA = {"mobilenet_v1": ("1600", "800"), "mobilenet_v2": ("400", "200")}
V2_TABLE3_REVISIONS_NOTE = (
    "The CVPR revision's maxima are exactly half of arXiv v4's. Two readings give them exactly: the "
    "same tensors counted in values (one byte each) instead of 16-bit bytes, or 16-bit bytes with "
    "the 112×112 row taken as O(1) memory (computed a few rows at a time), which moves the "
    "maximum to 56×56: 128·56²·2 B = 802.8K for V1 and, with the printed 32 channels, 32·56²·2 B "
    "= 200.7K for V2 (each 56×56 maximum is half of the 112×112 one, so both readings agree "
    "to the byte). 32-bit values would double the v4 figures, not halve them. The CVPR "
    "revision's O(1) 112×112 row makes the second reading its own; under it our V2 count is "
    "151K (24 channels at 56×56), because of the stride-2 reading of its 56×56 row.")

# V2 Table 7's MobileNetV1 rows: (OS, MF, published params with BN M, published MAdds B).
V2_TABLE7_V1 = ((16, False, "11.15", "14.25"), (8, True, "11.15", "941.9"))
V2_TABLE7_V1_NOTE = (
    "DeepLabv3 with ASPP on MobileNetV1's 1024-channel map, counted as the V2 rows of "
    "docs/heads.md are (`heads.reference_madds`: the 513 px crop, TensorFlow's atrous "
    "convolution on a map padded to a multiple of the rate, six scales each flipped for MF); "
    "that method reproduces the MobileNetV2 rows (5.8B, 387B). The parameters match. The OS 16 "
    "MAdds are 0.16% short of the printed figure; the OS 8 MF count is 5% above it, and the plain "
    "graph without the padding (`profile` at each scale) is {plain:.1f}B, 15% below: the printed "
    "941.9B lies between the two, and no source here says how it was counted")


NAS_NOTE = (
    "V1 and V2 were designed by hand and scaled by two multipliers, width α and resolution ρ. "
    "V3's Tables 1 and 2 are the output of a search instead (V3 §4): a platform-aware "
    "architecture search in the manner of MnasNet chose the blocks (kernel, expansion, squeeze-"
    "excite, per stage), with a reward that weighs ImageNet accuracy against latency measured on "
    "a Pixel phone (V3-Large starts from MnasNet-A1; V3-Small was searched anew with a steeper "
    "latency penalty); then NetAdapt trimmed it layer by layer, each step keeping the proposal "
    "(a narrower expansion, or a narrower bottleneck shared by the blocks that use it) with the "
    "least accuracy lost per millisecond saved. On top of the search the paper changed the "
    "expensive first and last layers by hand (16 stem filters, the efficient last stage) and "
    "chose h-swish for the deeper half.",
    "",
    "The V3 tables are used here as printed. `mobilenets fit` only walks the α × ρ grid of one "
    "fixed table, keeps the pairs within the given budgets (MAdds, parameters, V2 Table 3 memory, "
    "and latency measured on this machine) and ranks them by MAdds, or by the top-1 of trained "
    "checkpoints when given; it changes no layer's width on its own. The two techniques that "
    "produced V3 are verbs of their own, run on the user's engine rather than a Pixel phone: "
    "`mobilenets adapt` (NetAdapt on a trained model, per-group width cuts priced by a measured "
    "latency table) and `mobilenets search` (an evolutionary search with MnasNet's accuracy × "
    "latency reward); `docs/search.md` describes them and what they measured on Fashion-MNIST.",
)


def _layer_cost(model: str, resolution: int) -> tuple[int, int]:
    layers = [layer for layer in profile(model, resolution)["layers"]
              if layer["name"].startswith(TABLE3_LAYER)]
    return sum(layer["madds"] for layer in layers), sum(layer["params"] for layer in layers)


def v1_table3() -> list[dict]:
    rows = []
    for r in V1_TABLE3:
        madds, params = _layer_cost(r.model, r.resolution)
        rows.append(dict(change=r.change, model=r.model, resolution=r.resolution, madds=madds,
                         params=params, published_madds=r.madds, published_params=r.params,
                         match=matches(madds / 1e6, r.madds) and matches(params / 1e6, r.params)))
    return rows


def v1_tables_4_5() -> list[dict]:
    rows = []
    for table, label, model, madds_pub, params_pub in V1_TABLES_4_5:
        p = profile(model, 224)
        fc = sum(layer["madds"] for layer in p["layers"] if layer["kind"] == "fc")
        rows.append(dict(table=table, label=label, model=model, madds=p["madds"],
                         madds_without_fc=p["madds"] - fc, params=p["params_without_bn"],
                         published_madds=madds_pub, published_params=params_pub,
                         match=matches(p["madds"] / 1e6, madds_pub)
                         and matches(p["params_without_bn"] / 1e6, params_pub)))
    return rows


def _k_matches(nbytes: int, printed: str) -> bool:
    """Two significant digits, rounded or truncated, as the table prints."""
    step = 10.0 ** max(0, len(printed) - 2)
    return matches(nbytes / 1000, printed, step)


def v2_table3_rows() -> list[dict]:
    rows = []
    for model, printed in V2_TABLE3_PRINTED.items():
        ours = {r["size"]: r for r in profile(model, 224)["memory_table3"]}
        for size, (channels, k) in printed.items():
            o = ours[size]
            rows.append(dict(model=model, size=size, printed_channels=channels, printed_k=k,
                             channels=o["channels"], bytes_fp16=o["bytes_fp16"],
                             match=o["channels"] == channels and _k_matches(o["bytes_fp16"], k),
                             note=V2_TABLE3_NOTES.get((model, size), "")))
    return rows


def v2_table3_maxima() -> list[dict]:
    rows = []
    for model, (v4, cvpr) in V2_TABLE3_MAXIMA.items():
        table = profile(model, 224)["memory_table3"]
        fp16 = max(r["bytes_fp16"] for r in table)
        rows.append(dict(model=model, v4=v4, cvpr=cvpr, fp16_bytes=fp16, values=fp16 // 2,
                         fp16_bytes_without_112=max(r["bytes_fp16"] for r in table
                                                    if r["size"] != "112x112")))
    return rows


def v2_table7_v1() -> list[dict]:
    rows = []
    for os_, mf, params_pub, madds_pub in V2_TABLE7_V1:
        model = DeepLabV3(backbone="mobilenet_v1", output_stride=os_, aspp=True)
        scales = MF_SCALES if mf else (1.0,)
        madds = reference_madds(model, 513, scales, flip=mf)
        # The plain graph at the same sizes, only where the gap to the print needs it.
        plain = sum(profile(model, int(512 * s + 1))["madds"] for s in scales) * 2 if mf else None
        params = count_params(model)[0]
        rows.append(dict(output_stride=os_, mf=mf, params=params, madds=madds, plain_madds=plain,
                         published_params=params_pub, published_madds=madds_pub,
                         params_match=matches(params / 1e6, params_pub),
                         madds_match=matches(madds / 1e9, madds_pub)))
    return rows


def _mark(ok: bool) -> str:
    return "✓" if ok else "✗"


def render_sections() -> str:
    lines = ["", "## V1 Table 3: from a standard convolution to MobileNet, one layer", "",
             f"The example layer (3×3, 512 → 512 channels, 14×14 map) is `{TABLE3_LAYER}*` of "
             "each model, profiled whole; each row adds its change to the previous one.", "",
             "| change | model | input | MAdds published | ours | params published | ours | |",
             "|---|---|---|---|---|---|---|---|"]
    for r in v1_table3():
        lines.append(f"| {r['change']} | `{r['model']}` | {r['resolution']} | "
                     f"{r['published_madds']}M | {r['madds'] / 1e6:.2f}M | "
                     f"{r['published_params']}M | {r['params'] / 1e6:.3f}M | {_mark(r['match'])} |")
    lines += ["", "## V1 Tables 4 and 5: full convolutions; shallow vs narrow", "",
              "`mobilenet_v1_full_conv` replaces every separable layer by one full 3×3 conv "
              "(`full_conv=True`); `mobilenet_v1_shallow` drops the five 14×14×512 separable "
              "layers (`shallow=True`, `tables.V1_SHALLOW_BLOCKS`).", "",
              "| table | network | model | MAdds published | ours | ours without the FC | "
              "params published | ours | |", "|---|---|---|---|---|---|---|---|---|"]
    for r in v1_tables_4_5():
        lines.append(f"| {r['table']} | {r['label']} | `{r['model']}` | {r['published_madds']}M | "
                     f"{r['madds'] / 1e6:.1f}M | {r['madds_without_fc'] / 1e6:.1f}M | "
                     f"{r['published_params']}M | {r['params'] / 1e6:.3f}M | {_mark(r['match'])} |")
    lines += ["", TABLE4_NOTE, "",
              "## V2 Table 3 row by row, and its two revisions", "",
              "Printed (arXiv v4) beside ours: channels / K (1000 bytes, 16-bit values).", "",
              "| model | size | printed | ours | | why they differ |", "|---|---|---|---|---|---|"]
    for r in v2_table3_rows():
        lines.append(f"| `{r['model']}` | {r['size']} | {r['printed_channels']}/{r['printed_k']}K | "
                     f"{r['channels']}/{r['bytes_fp16'] / 1000:.1f}K | {_mark(r['match'])} | "
                     f"{r['note']} |")
    lines += ["", V2_TABLE3_STRIDE2_AT_112, "",
              "| model | arXiv v4 max | CVPR max | ours, 16-bit bytes | ours, values | "
              "ours, 16-bit bytes without the 112×112 row |", "|---|---|---|---|---|---|"]
    for r in v2_table3_maxima():
        lines.append(f"| `{r['model']}` | {r['v4']}K | {r['cvpr']}K | {r['fp16_bytes'] / 1000:.1f}K | "
                     f"{r['values'] / 1000:.1f}K | {r['fp16_bytes_without_112'] / 1000:.1f}K |")
    lines += ["", V2_TABLE3_REVISIONS_NOTE, "",
              "## V2 Table 7: the MobileNetV1 rows", "",
              "| network | OS | MF | params published | ours (with BN) | MAdds published | ours | |",
              "|---|---|---|---|---|---|---|---|"]
    rows7 = v2_table7_v1()
    for r in rows7:
        lines.append(f"| MNet V1, ASPP | {r['output_stride']} | {'✓' if r['mf'] else ''} | "
                     f"{r['published_params']}M | {r['params']:,} | {r['published_madds']}B | "
                     f"{r['madds'] / 1e9:.2f}B | {_mark(r['params_match'] and r['madds_match'])} |")
    plain_mf = next(r["plain_madds"] for r in rows7 if r["mf"])
    lines += ["", V2_TABLE7_V1_NOTE.format(plain=plain_mf / 1e9) + ".", "",
              "## Accuracy against MAdds in the reference code's α × ρ tables", "",
              "Pairs where the cheaper checkpoint is the more accurate one (TF-slim's tables, "
              "`tables.V1_CHECKPOINTS` / `V2_CHECKPOINTS`; `tradeoff.accuracy_inversions`). "
              "Accuracy mostly rises with MAdds, not always: `fit` ranks by MAdds only when no "
              "trained checkpoints are given.", ""]
    for name, table in (("MobileNetV1", V1_CHECKPOINTS), ("MobileNetV2", V2_CHECKPOINTS)):
        pairs = accuracy_inversions(table)
        lines.append(f"- {name}, {len(table)} checkpoints, {len(pairs)} inversions: " + "; ".join(
            f"α {a[0]:g} ρ {a[1]} ({table[a][0]}M, {table[a][1]}%) beats α {b[0]:g} ρ {b[1]} "
            f"({table[b][0]}M, {table[b][1]}%)" for a, b in pairs) + ".")
    lines += ["", "## Where V3's tables came from, and what `fit`, `adapt` and `search` do", "", *NAS_NOTE]
    return "\n".join(lines) + "\n"


def render_document() -> str:
    """The whole of docs/paper_tables.md (`mobilenets paper-tables`)."""
    return render_markdown() + render_sections()
