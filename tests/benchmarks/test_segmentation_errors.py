"""benchmarks/segmentation_errors.py: the edge band has the width the geometry gives, and a
prediction that is off by one pixel errs only inside the band."""
import torch
import torch.nn.functional as F

from test_accuracy import load_benchmark

SCRIPT = load_benchmark("segmentation_errors")


def square(size: int, top: int, left: int, side: int, label: int = 1) -> torch.Tensor:
    mask = torch.zeros(1, size, size, dtype=torch.int64)
    mask[:, top:top + side, left:left + side] = label
    return mask


def test_band_around_a_square_is_eight_side_radius_pixels():
    # The band is the ring from side - 2r to side + 2r: (k + 2r)² - (k - 2r)² = 8kr.
    for side, radius in ((10, 1), (10, 3), (7, 2)):
        assert int(SCRIPT.edge_band(square(40, 12, 9, side), radius).sum()) == 8 * side * radius


def test_the_image_border_is_no_edge():
    band = SCRIPT.edge_band(square(20, 0, 0, 8), 2)   # the square sits in the top-left corner
    # Only its two inner sides have a band: an L of width 4 from row/column 6 to 9 inside 10×10.
    assert int(band.sum()) == 10 * 10 - 6 * 6


class ShiftedTruth(torch.nn.Module):
    """Scores that put each pixel in the class of its left neighbour's true label."""
    def __init__(self, masks, num_classes):
        super().__init__()
        self.masks, self.num_classes = masks, num_classes

    def forward(self, images):
        shifted = torch.cat([self.masks[:, :, :1], self.masks[:, :, :-1]], dim=2)
        return F.one_hot(shifted, self.num_classes).permute(0, 3, 1, 2).float()


def test_a_one_pixel_shift_errs_only_in_the_band():
    masks = square(32, 5, 5, 12, 1) + square(32, 20, 18, 9, 2)
    model = ShiftedTruth(masks, 3)
    confusions = SCRIPT.error_split(model, [(torch.zeros(1, 3, 32, 32), masks)], 3, (1, 2))
    for r in (1, 2):
        inside, band = confusions[f"interior{r}"], confusions[f"band{r}"]
        assert torch.equal(inside + band, confusions["all"])
        assert int(inside.sum() - inside.diag().sum()) == 0
    # Each object loses its first column to the background and takes one from it on its right:
    # 12 + 9 pixels each way.
    wrong = confusions["all"].sum() - confusions["all"].diag().sum()
    assert int(wrong) == 2 * (12 + 9)
