import json
import subprocess
import sys

import pytest

from mobilenets.cli import main


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.slow
def test_models_lists_every_classifier(capsys):
    code, out, _ = run(capsys, "models", "--json")
    rows = {r["model"]: r for r in json.loads(out)}
    assert code == 0 and rows["mobilenet_v2"]["madds"] == 300_774_272
    assert rows["mobilenet_v1"]["memory_table3_bytes_fp16"] == 1_605_632
    assert "mobilenet_v3_large_075" in rows and "mobilenet_v2_140" in rows


def test_profile_json_matches_api(capsys):
    code, out, _ = run(capsys, "profile", "mobilenet_v2", "--width-mult", "1.4",
                       "--resolution", "224", "--json")
    r = json.loads(out)
    assert code == 0 and r["params_without_bn"] == 6_060_840 and r["madds"] == 582_195_824
    assert r["layers"][-1]["name"] == "classifier"


def test_profile_table_with_layers(capsys):
    code, out, _ = run(capsys, "profile", "mobilenet_v3_small", "--layers", "--resolution", "96")
    assert code == 0 and "blocks.0.se.fc1" in out and "multiply-adds" in out


@pytest.mark.parametrize("argv, message", [
    (["profile", "mobilenet_v5"], "unknown model 'mobilenet_v5'"),
    (["profile", "mobilenet_v2", "--width-mult", "0"], "width_mult=0.0 is out of range"),
    (["profile", "mobilenet_v2", "--resolution", "16"], "resolution=16 is too small"),
    (["profile", "mobilenet_v2", "--in-chans", "0"], "in_chans=0 is out of range"),
    (["profile", "mobilenet_v2", "--minimalistic"], "MobileNetV3 only"),
])
def test_bad_input_exits_2_with_one_line(capsys, argv, message):
    code, out, err = run(capsys, *argv)
    assert code == 2 and message in err and err.count("\n") == 1


@pytest.mark.slow
def test_console_entry_point_and_argparse_errors():
    r = subprocess.run([sys.executable, "-m", "mobilenets", "profile", "mobilenet_v2",
                        "--width-mult", "wide"], capture_output=True, text=True)
    assert r.returncode == 2 and "invalid float value: 'wide'" in r.stderr
    r = subprocess.run([sys.executable, "-m", "mobilenets", "profile", "mobilenet_v3_small",
                        "--json"], capture_output=True, text=True)
    assert r.returncode == 0 and json.loads(r.stdout)["madds"] == 56_510_400
