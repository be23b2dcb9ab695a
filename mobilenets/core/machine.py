"""What a timing was measured on: the CPU as /proc/cpuinfo names it, its vector extensions, the
load at the time, and the rate of one large fp32 matrix product (SGEMM) in the same process.

The 2-core machines this project runs on differ about 3× in speed for the same job, so a time or
an images/s figure means little alone; beside the SGEMM rate measured in the same run it becomes
a ratio that carries from one machine to another.
"""
from __future__ import annotations

import os
import re
import statistics
import time
from pathlib import Path

VECTOR_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile")


def read_cpuinfo(cpuinfo: str | None = None) -> str:
    return cpuinfo if cpuinfo is not None else Path("/proc/cpuinfo").read_text()


def cpuinfo_field(text: str, name: str) -> str:
    """The first CPU's value of `name` in /proc/cpuinfo text ('' where absent)."""
    m = re.search(rf"^{name}\s*:\s*(.*)$", text, re.M)
    return m.group(1).strip() if m else ""


def cpu_description(cpuinfo: str | None = None) -> dict:
    """Model name, vendor, family/model numbers and the vector extensions of the first CPU."""
    text = read_cpuinfo(cpuinfo)

    def field(name):
        return cpuinfo_field(text, name)
    flags = set(field("flags").split())
    return {"model_name": field("model name"), "vendor": field("vendor_id"),
            "family": int(field("cpu family") or 0), "model": int(field("model") or 0),
            "vector_flags": [f for f in VECTOR_FLAGS if f in flags]}


def sgemm_gflops(threads: int | None = None, n: int = 2048, repeats: int = 5) -> float:
    """Median GFLOP/s of an n×n×n fp32 matrix product at `threads` intra-op threads."""
    import torch
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        a, b = torch.randn(n, n), torch.randn(n, n)
        torch.mm(a, b)                       # first call pays for packing buffers and thread start
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            torch.mm(a, b)
            times.append(time.perf_counter() - t)
        return 2 * n ** 3 / statistics.median(times) / 1e9
    finally:
        torch.set_num_threads(previous)


def describe_machine(threads: int | None = None) -> dict:
    """CPU, cores available to this process, load average and the SGEMM rate at `threads`."""
    import torch
    threads = threads or torch.get_num_threads()
    return {**cpu_description(), "cores": len(os.sched_getaffinity(0)), "threads": threads,
            "load_average": [round(v, 2) for v in os.getloadavg()],
            "sgemm_gflops": round(sgemm_gflops(threads), 1), "torch": torch.__version__}
