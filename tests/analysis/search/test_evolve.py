"""The architecture search: its genomes are V3 table rows, and a short search writes an
architecture that builds, with a resume that replays the same candidates."""
import json
import shlex

import pytest

from mobilenets import create_model
from mobilenets.analysis.search.evolve import (V3_SMALL_GENOME, SearchSettings, load_arch, reward, rows_of,
                                               search)
from mobilenets.cli import main
from mobilenets.core.errors import MobileNetsError
from mobilenets.models.mobilenet import load_model
from mobilenets.models.tables import V3_SMALL_BLOCKS

pytestmark = pytest.mark.usefixtures("one_thread")


def test_v3_small_genome_has_the_papers_widths_strides_and_depths():
    rows = rows_of(V3_SMALL_GENOME)
    assert [(c, s) for _k, _e, c, _se, _nl, s in rows] == [(c, s) for _k, _e, c, _se, _nl, s in V3_SMALL_BLOCKS]
    assert [k for k, *_ in rows] == [k for k, *_ in V3_SMALL_BLOCKS]


def test_mnasnet_reward_trades_5_percent_for_twice_the_latency():
    # MnasNet chose w = -0.07 so that 2x latency is worth about +5% accuracy.
    assert reward(0.75, 2.0, 1.0, -0.07) == pytest.approx(0.75 * 2 ** -0.07)
    assert reward(0.75 * 1.05, 2.0, 1.0, -0.07) == pytest.approx(reward(0.75, 1.0, 1.0, -0.07), rel=0.002)


def test_bad_rows_are_refused():
    with pytest.raises(MobileNetsError, match=r"blocks\[1\]"):
        create_model("mobilenet_v3_small", blocks=[[3, 16, 16, True, "RE", 2], [4, 16, 16, True, "RE", 1]])


@pytest.mark.needs_fmnist
def test_short_search_writes_a_buildable_architecture_and_resumes(tmp_path):
    s = SearchSettings(engine="eager", target_latency_ms=1.0, population=2, sample=1, candidates=3,
                       proxy_steps=2, batch_size=16, val_images=32)
    report = search(tmp_path / "s", s, log=lambda *a: None)
    log = [json.loads(ln) for ln in (tmp_path / "s" / "log.jsonl").read_text().splitlines()]
    assert len(log) == 3 and log[0]["rows"] == rows_of(V3_SMALL_GENOME)
    model = load_arch(tmp_path / "s" / "arch.json")
    assert [list(b) for b in report["best"]["model_kwargs"]["blocks"]] == \
           [[b.kernel, b.expand_ch, b.out_ch, b.se_ch > 0, "HS" if b.act == "hswish" else "RE",
             b.stride if i else 2] for i, b in enumerate(model.arch.blocks)]
    # The command arch.json gives trains that very network (not the recipe's α of it).
    command = shlex.split(report["best"]["train_command"])
    command[command.index("--out") + 1] = str(tmp_path / "trained")
    assert main(command[1:] + ["--epochs", "1", "--batch-size", "16", "--set", "limit_train=16",
                               "--set", "limit_val=16", "--set", "limit_test=16"]) == 0
    trained, _ = load_model(tmp_path / "trained" / "best.safetensors")
    assert trained.arch == model.arch
    # A resume of a finished search replays its log: the same best, nothing re-scored.
    again = search(tmp_path / "s", SearchSettings(), resume=True, log=lambda *a: None)
    assert again["best"] == report["best"]
    with pytest.raises(MobileNetsError, match="holds a search already"):
        search(tmp_path / "s", s, log=lambda *a: None)
