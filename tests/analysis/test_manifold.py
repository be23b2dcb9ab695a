import json

import matplotlib.image
import numpy as np
import pytest

from mobilenets.cli import main
from mobilenets.core.errors import MobileNetsError
from mobilenets.analysis.manifold import manifold_experiment, plot_manifold, reconstruct, spiral


def test_relu_error_falls_as_dimension_grows():
    r = manifold_experiment((2, 3, 5, 15, 30), points=500, seeds=30)
    errors = r["relu_error"]
    assert all(a > b for a, b in zip(errors, errors[1:])), errors
    # The paper's reading: n = 2, 3 lose the spiral, n = 15–30 keep most of it.
    assert errors[0] > 0.5 and errors[-1] < 0.25
    # Without ReLU the pseudo-inverse recovers the spiral exactly: the control.
    assert max(r["linear_error"]) < 1e-12


def test_raw_error_tends_to_half_not_zero():
    # T⁺ ReLU(T x) → x/2 + offset for large n: only the fitted error can approach 0.
    r = manifold_experiment((100,), points=500, seeds=10)
    assert 0.45 < r["relu_error_raw"][0] < 0.6
    assert r["relu_error"][0] < 0.15


def test_one_dimension_loses_the_plane_even_without_relu():
    r = manifold_experiment((1,), points=200, seeds=5)
    assert r["linear_error"][0] > 0.3


def test_reconstruction_is_seeded():
    x = spiral(100)
    assert np.array_equal(reconstruct(x, 5, seed=3), reconstruct(x, 5, seed=3))
    assert not np.array_equal(reconstruct(x, 5, seed=3), reconstruct(x, 5, seed=4))


@pytest.mark.parametrize("dims", [(), (0,), (2, -1)])
def test_bad_dimensions(dims):
    with pytest.raises(MobileNetsError, match="dimension|no dimensions"):
        manifold_experiment(dims)


def test_figure_has_a_panel_per_dimension(tmp_path):
    out = tmp_path / "manifold.png"
    plot_manifold(out, (2, 30), points=200)
    wide = matplotlib.image.imread(out)
    plot_manifold(out, (2, 3, 5, 15, 30), points=200)
    wider = matplotlib.image.imread(out)
    assert wider.shape[1] > 1.8 * wide.shape[1]  # 6 panels against 3


def test_cli_json_contract(capsys, tmp_path):
    assert main(["manifold", "--dims", "2", "30", "--points", "300", "--seeds", "5", "--json",
                 "--out", str(tmp_path / "m.png")]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["dims"] == [2, 30]
    assert len(r["relu_error"]) == len(r["linear_error"]) == 2
    assert (tmp_path / "m.png").stat().st_size > 0


def test_cli_bad_input_is_one_line(capsys):
    assert main(["manifold", "--dims", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "dimension 0" in err
