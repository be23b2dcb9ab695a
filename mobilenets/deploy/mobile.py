"""What the phone engines share: ExecuTorch (`executorch.py`: .pte, XNNPACK delegate, fp32 and
int8), LiteRT (`litert.py`: .tflite, fp32) and OpenVINO (a `bench` backend in `backends.py`).

Their runtimes and converters come from the optional 'mobile' extra. Every entry point imports
them through `require`, so without the extra it stops with one MobileNetsError line naming the
extra instead of an ImportError traceback.
"""
from __future__ import annotations

import importlib

from ..core.errors import MobileNetsError

MOBILE_FORMATS = ("executorch", "tflite")
MOBILE_PACKAGES = ("executorch", "litert_torch", "ai_edge_litert", "openvino", "nncf")
INSTALL_HINT = "pip install -e \".[mobile]\""


def require(module: str, what: str):
    """Import `module` from the 'mobile' extra, or a one-line MobileNetsError naming the extra."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MobileNetsError(f"{what} needs the 'mobile' extra: {INSTALL_HINT} "
                              f"({module.split('.')[0]} is not installed)") from e


def first_line(e: BaseException) -> str:
    """An exception as one short line: the runtimes' messages run over many lines."""
    return f"{type(e).__name__}: " + (str(e).strip().splitlines() or [""])[0][:160]


def describe_delegation(report: dict) -> str:
    """One line on how much of a lowered program XNNPACK runs (see executorch.delegation)."""
    if not report:
        return ""
    outside = report["outside_delegate"]
    ops = ", ".join(f"{op} ×{n}" for op, n in outside.items())
    return (f"{report['delegated_nodes']} ops in {report['subgraphs']} XNNPACK subgraph"
            f"{'s' if report['subgraphs'] != 1 else ''}; "
            + (f"outside the delegate: {ops}" if outside else "nothing outside the delegate"))
