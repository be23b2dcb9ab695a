import pytest

from mobilenets.core.machine import cpu_description, sgemm_gflops
from mobilenets.deploy.bench import cpu_peak

ICE_LAKE = """processor\t: 0
vendor_id\t: GenuineIntel
cpu family\t: 6
model\t\t: 106
model name\t: Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz
cpu MHz\t\t: 2900.000
flags\t\t: fpu sse2 avx avx2 fma avx512f avx512_vnni
"""


def test_cpu_description_reads_cpuinfo():
    d = cpu_description(ICE_LAKE)
    assert d == {"model_name": "Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz", "vendor": "GenuineIntel",
                 "family": 6, "model": 106, "vector_flags": ["avx2", "fma", "avx512f", "avx512_vnni"]}


def test_sgemm_rate_is_below_the_cpus_peak():
    # A measured rate can approach the FMA units' peak but not pass it; /proc/cpuinfo's clock may be
    # the base clock, below what the core boosts to, hence the margin.
    rate = sgemm_gflops(threads=1, n=512, repeats=3)
    assert 0 < rate <= cpu_peak(cores=1)["gflops"] * 1.5
