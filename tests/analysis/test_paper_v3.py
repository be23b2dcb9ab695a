import pytest

from mobilenets import MobileNetsError, create_model, profile
from mobilenets.analysis.paper_v3 import (ROWS, TABLE6, TABLE7_8, counts, row_matches,
                                          task_counts, task_row_matches)


@pytest.mark.parametrize("row", ROWS, ids=lambda r: f"{r.source[-15:]}-{r.model}-{r.resolution}")
def test_table9_rows(row):
    # A printed figure matches, or carries the note that explains why not.
    madds_ok, params_ok = row_matches(row)
    assert madds_ok == (not row.madds_note) and params_ok == (not row.params_note), counts(row)


def test_v3_last_layers_under_a_multiplier_follow_slim():
    # slim (finegrain_classification_mode): the layer after pooling stays 1280 / 1024 at every
    # width; the conv before pooling is make_divisible(960·α) / make_divisible(576·α).
    large = create_model("mobilenet_v3_large_125").arch
    assert (large.last_conv_ch, large.head_ch) == (1200, 1280)
    small = create_model("mobilenet_v3_small_035").arch
    # 576 · 0.35 = 201.6 → nearest multiple of 8 is 200 (6 × the 32-wide last block is 192)
    assert (small.blocks[-1].out_ch, small.last_conv_ch, small.head_ch) == (32, 200, 1024)


def test_large_125_notes_two_builds():
    # A 1600-wide layer after pooling (1280 · 1.25) adds Linear(1200, 1600 - 1280) with bias
    # and 320 more classifier inputs: 320·1200 + 320 + 320·1000 parameters, and the same
    # multiply-adds without the bias.
    unscaled = profile("mobilenet_v3_large_125")
    scaled = profile(create_model("mobilenet_v3_large_125", head_channels=1600))
    assert scaled["params_without_bn"] - unscaled["params_without_bn"] == 320 * 1200 + 320 + 320 * 1000
    assert scaled["madds"] - unscaled["madds"] == 320 * 1200 + 320 * 1000
    assert round(scaled["madds"] / 1e6) == 356 and round(unscaled["params_without_bn"] / 1e5) == 75


def test_small_1280_adds_the_wider_layer_only():
    # 576 → 1280 instead of 576 → 1024 (with bias), and 256 more classifier inputs.
    base, wide = profile("mobilenet_v3_small"), profile(create_model("mobilenet_v3_small", head_channels=1280))
    assert wide["params"] - base["params"] == 256 * 576 + 256 + 256 * 1000
    assert round(wide["params_without_bn"] / 1e5) == 29   # the first revision's 2.9M


def test_head_channels_is_v3_only():
    with pytest.raises(MobileNetsError, match="head_channels=1280 applies to MobileNetV3"):
        create_model("mobilenet_v2", head_channels=1280)
    with pytest.raises(MobileNetsError, match="head_channels=0 is out of range"):
        create_model("mobilenet_v3_small", head_channels=0)


@pytest.mark.parametrize("row", TABLE6, ids=lambda r: r.label)
def test_table6_rows(row):
    assert task_row_matches(row) == (not row.note), task_counts(row)


def test_reduced_tail_halves_the_last_stage():
    # slim's V3_LARGE_DETECTION: spec entries 13-16 (blocks 12-14 and the 960 conv) halved;
    # the expansions after them follow the halved input (6 × 80 = 480), block 12's does not.
    arch = create_model("mobilenet_v3_large", reduced_tail=True).arch
    assert [b.out_ch for b in arch.blocks[11:]] == [112, 80, 80, 80]
    assert [b.expand_ch for b in arch.blocks[12:]] == [672, 480, 480]
    assert arch.last_conv_ch == 480
    small = create_model("mobilenet_v3_small", reduced_tail=True).arch   # blocks 8-10, 576 conv
    assert [b.out_ch for b in small.blocks[7:]] == [48, 48, 48, 48] and small.last_conv_ch == 288


@pytest.mark.parametrize("row", TABLE7_8, ids=lambda r: r.label)
def test_table7_8_rows(row):
    assert task_row_matches(row) == (not row.note), task_counts(row)


def test_lraspp_paper_pooling_gates_a_1x4_map_at_full_resolution():
    # 1024×2048 at output stride 16 is a 64×128 map; a 49×49 window with stride (16, 20) gives
    # ⌊(64 − 49) / 16⌋ + 1 = 1 row and ⌊(128 − 49) / 20⌋ + 1 = 4 columns, so the gate's 1×1 conv
    # (480 → 128 on the halved tail) runs 4 times instead of once.
    kw = dict(num_classes=19, reduced_tail=True)
    paper = profile(create_model("lraspp_mobilenet_v3_large", pooling="paper", **kw), (1024, 2048))
    plain = profile(create_model("lraspp_mobilenet_v3_large", **kw), (1024, 2048))
    assert paper["madds"] - plain["madds"] == 3 * 480 * 128
