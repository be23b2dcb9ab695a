import json

import pytest

from mobilenets.cli import main
from mobilenets.analysis.cost import TABLE2_PAPER, breakdown, layer_costs
from mobilenets.core.errors import MobileNetsError


@pytest.mark.parametrize("m,n,k,f", [(512, 512, 3, 14), (32, 64, 3, 112), (3, 32, 3, 224),
                                     (96, 160, 5, 7), (1, 1, 1, 1), (1024, 1024, 7, 7),
                                     (24, 144, 3, 56), (7, 13, 5, 9)])
def test_separable_ratio_is_the_v1_formula(m, n, k, f):
    c = layer_costs(m, n, k, f)
    assert c["standard"] == {"params": k * k * m * n, "madds": k * k * m * n * f * f}
    assert c["separable"]["madds"] == k * k * m * f * f + m * n * f * f
    assert c["ratio"] == pytest.approx(1 / n + 1 / k ** 2, rel=1e-12)
    assert c["formula_ratio"] == pytest.approx(c["ratio"], rel=1e-12)


def test_v1_claim_eight_to_nine_times_less_for_3x3():
    c = layer_costs(512, 512, 3, 14)
    assert 8 < 1 / c["ratio"] < 9


def test_further_rows():
    rows = {r["name"]: r for r in layer_costs(64, 64, 3, 10, groups=[2, 4])["rows"]}
    assert rows["spatially separable (3×1, 1×3)"]["ratio"] == pytest.approx(6 / 9)
    assert rows["grouped (g=4)"]["params"] == 3 * 3 * 64 * 64 // 4
    assert rows["grouped (g=2)"]["ratio"] == pytest.approx(0.5)


@pytest.mark.parametrize("args,match", [
    ((0, 8, 3, 8), "in=0"), ((8, 8, 3, -1), "size=-1"), ((8, 8, 5, 4), "kernel=5 is larger"),
    ((8, 8, 0, 4), "kernel=0")])
def test_bad_layer(args, match):
    with pytest.raises(MobileNetsError, match=match):
        layer_costs(*args)


def test_groups_must_divide():
    with pytest.raises(MobileNetsError, match="groups=4 does not divide"):
        layer_costs(6, 9, 3, 8, groups=[4])


def test_v1_table2_breakdown_against_the_paper():
    b = breakdown("mobilenet_v1", 224)
    rows = {r["kind"]: r for r in b["rows"]}
    assert set(rows) == set(TABLE2_PAPER)
    assert [r["name"] for r in b["rows"]] == ["Conv 1×1", "Conv DW 3×3", "Conv 3×3", "Fully Connected"]
    for kind, (madds_pct, params_pct) in TABLE2_PAPER.items():
        assert round(rows[kind]["params_pct"], 2) == params_pct, kind
        if kind != "conv":
            assert round(rows[kind]["madds_pct"], 2) == madds_pct, kind
    # The paper prints 1.19% for the first conv; the count is 1.91%. The printed column sums to
    # 99.29%, and to 100.01% (rounding) with 1.91: a transposition in the paper.
    assert round(rows["conv"]["madds_pct"], 2) == 1.91
    assert round(sum(m for m, _ in TABLE2_PAPER.values()), 2) == 99.29
    assert b["madds"] == 568_740_352   # the reference implementation's count (paper.REFERENCE_COUNTS)
    assert round(sum(r["madds"] for r in b["rows"]) / 1e6) == 569   # V1 Table 6


def test_v3_rows_name_its_kernels():
    names = [r["name"] for r in breakdown("mobilenet_v3_small", 224)["rows"]]
    assert names == ["Conv 1×1", "Conv DW 3×3, 5×5", "Conv 3×3", "Fully Connected"]


def test_cli_json_contract(capsys):
    assert main(["cost", "--in", "512", "--out", "512", "--kernel", "3", "--size", "14", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert set(r["standard"]) == set(r["separable"]) == {"params", "madds"}
    assert r["ratio"] == pytest.approx(r["formula_ratio"])


def test_cli_bad_input(capsys):
    assert main(["cost", "--in", "8", "--out", "8", "--kernel", "9", "--size", "4"]) == 2
    assert main(["cost", "--in", "8"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert "kernel=9 is larger than the 4×4 feature map" in err[0]
    assert "--out, --kernel, --size" in err[1]
