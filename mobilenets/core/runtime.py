"""Process settings that make eager PyTorch fast on CPU.

glibc hands every large block (activations are megabytes) back to the OS on free and maps it
again on the next malloc, so each layer of each forward pass page-faults its output buffer in:
on this project's 2-core machine that is two thirds of MobileNetV2's eager time at batch 32.
Telling glibc to serve large blocks from its heap and never to trim it keeps those pages mapped
between layers and between iterations. It only changes where memory comes from, not what is
computed; the cost is that the process keeps its peak heap mapped until it exits.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os

M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
_TRIM_THRESHOLD = 2**30  # 1 GiB of free heap may stay mapped
_applied: bool | None = None


def tune_allocator(force: bool = False) -> bool:
    """Apply the glibc malloc settings once per process; True if they are in effect.

    Skipped when MOBILENETS_MALLOC_TUNING=0, when the user already set MALLOC_MMAP_MAX_ /
    MALLOC_TRIM_THRESHOLD_ themselves, or when the C library is not glibc.
    """
    global _applied
    if _applied is not None and not force:
        return _applied
    _applied = False
    if os.environ.get("MOBILENETS_MALLOC_TUNING", "1") == "0":
        return False
    if "MALLOC_MMAP_MAX_" in os.environ or "MALLOC_TRIM_THRESHOLD_" in os.environ:
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _applied = bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, _TRIM_THRESHOLD))
    return _applied


def allocator_tuned() -> bool:
    return bool(_applied)
