"""Settings the papers and their reference code fix beyond the architecture tables, as the
models use them: each family's batch norm (`models.tables.BN_DEFAULTS`)."""
from __future__ import annotations

from ..models.tables import BN_DEFAULTS


def render_markdown() -> list[str]:
    lines = ["## Batch norm per family", "",
             "`create_model` builds every batch norm with its family's epsilon and momentum unless",
             "`bn_eps` / `bn_momentum` are given (PyTorch's momentum is 1 − TensorFlow's decay;",
             "`padding=\"same\"`, for TensorFlow-trained weights, takes eps 1e-3 in every family).",
             "",
             "| family | eps | momentum | source |", "|---|---|---|---|"]
    for family, bn in BN_DEFAULTS.items():
        lines.append(f"| {family} | {bn.eps:g} | {bn.momentum:g} | {bn.source} |")
    lines += ["",
              "Earlier versions used eps 1e-5 and momentum 0.1 in every family. Neither is in a state",
              "dict, so weights files saved before still load, but a V1-V3 model trained with eps",
              "1e-5 computes slightly differently under 1e-3: load it with `bn_eps=1e-5` (and",
              "`bn_momentum=0.1` to fine-tune as before), e.g. `load_model(path, bn_eps=1e-5)`.",
              "Converted weights state each source's epsilon (`models/convert.py`, MODEL_OPTIONS),",
              "so conversion stays exact.", ""]
    return lines
