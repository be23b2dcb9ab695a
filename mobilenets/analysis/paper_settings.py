"""Settings the papers and their reference code fix beyond the architecture tables, as the
models use them: each family's batch norm (`models.tables.BN_DEFAULTS`)."""
from __future__ import annotations

from ..models.tables import BN_DEFAULTS


def render_markdown() -> list[str]:
    lines = ["## Batch norm per family", "",
             "`create_model` builds every batch norm with its family's epsilon (`padding=\"same\"`,",
             "for TensorFlow-trained weights, takes 1e-3 in every family) and momentum 0.1 unless",
             "`bn_eps` / `bn_momentum` are given. The reference momentum (PyTorch's sense: 1 −",
             "TensorFlow's decay) is what the source trains with; it is not the default because its",
             "running averages start at mean 0 / variance 1 and forget that start only after",
             "hundreds to thousands of steps, so shorter runs would evaluate with it (the 100-step",
             "SSDLite fit in `tests/train/test_tasks.py` fails its AP50 check at 0.003).",
             "For a long run pass it: recipe `\"model_options\": {\"bn_momentum\": 0.003}`.",
             "",
             "| family | eps | default momentum | reference momentum | source |",
             "|---|---|---|---|---|"]
    for family, bn in BN_DEFAULTS.items():
        lines.append(f"| {family} | {bn.eps:g} | {bn.momentum:g} | {bn.reference_momentum:g} | "
                     f"{bn.source} |")
    lines += ["",
              "Earlier versions used eps 1e-5 in every family. It is in no state dict, so weights",
              "files saved before still load, but a V1-V3 model trained with eps 1e-5 computes",
              "slightly differently under 1e-3: load it with `bn_eps=1e-5`, e.g.",
              "`load_model(path, bn_eps=1e-5)`. Converted weights state each source's epsilon",
              "(`models/convert.py`, MODEL_OPTIONS), so conversion stays exact.", ""]
    return lines
