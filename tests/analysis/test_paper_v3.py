import pytest

from mobilenets import MobileNetsError, create_model, profile
from mobilenets.analysis.paper_v3 import ROWS, counts, row_matches


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
