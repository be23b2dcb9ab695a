"""The weights format: round trips, pretrained= by path and URL, weights-only checkpoints, and
one-line errors for files that are not weights, are cut short, or would run code."""
import functools
import hashlib
import json
import http.server
import pickle
import socket
import threading
import time
from pathlib import Path

import pytest
import torch

from mobilenets import create_model
from mobilenets.core.errors import MobileNetsError
from mobilenets.models import weights
from mobilenets.models.layers import ConvBNAct
from mobilenets.models.weights import (imagenet_classes, load_backbone, load_weights, resolve_weights, save_weights,
                                       upgrade_state, write_weights)
from mobilenets.models.mobilenet import load_model

X = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))


# tiny forward passes: one thread (fixture in conftest.py)
pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(**kw):
    torch.manual_seed(0)
    model = create_model("mobilenet_v2", width_mult=0.35, num_classes=10, **kw)
    with torch.no_grad():  # BN statistics that are not the identity, so that they must load
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model.eval()


def logits(model):
    with torch.no_grad():
        return model.eval()(X)


@pytest.fixture
def saved(tmp_path):
    model = tiny()
    path = tmp_path / "w.safetensors"
    save_weights(path, model, {"classes": [f"c{i}" for i in range(10)],
                               "preprocessing": {"resolution": 64, "mean": [0.5] * 3, "std": [0.5] * 3}})
    return model, path


def one_line_error(excinfo) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg and msg
    return msg


def test_round_trip(saved):
    model, path = saved
    state, meta = load_weights(path)
    assert meta["model"] == "mobilenet_v2" and meta["format"] == "mobilenets/1"
    assert meta["model_kwargs"] == {"width_mult": 0.35, "num_classes": 10}
    assert torch.equal(state["blocks.3.expand.bn.running_var"],
                       model.state_dict()["blocks.3.expand.bn.running_var"])
    loaded, _ = load_model(path)
    assert torch.equal(logits(loaded), logits(model))
    assert loaded.classes[3] == "c3" and loaded.pretrained_cfg["resolution"] == 64


def test_pretrained_path(saved):
    model, path = saved
    loaded = create_model("mobilenet_v2", pretrained=str(path), width_mult=0.35, num_classes=10)
    assert torch.equal(logits(loaded), logits(model))
    assert loaded.pretrained_cfg["mean"] == [0.5, 0.5, 0.5]


def test_pretrained_takes_shape_neutral_options_from_the_file(tmp_path):
    # TF padding, BN eps and ReLU6 in V1 change no tensor shape: without them a TF-converted
    # file would load and silently compute something else
    torch.manual_seed(0)
    model = create_model("mobilenet_v1", width_mult=0.25, num_classes=5, padding="same",
                         act="relu6").eval()
    path = tmp_path / "tf.safetensors"
    save_weights(path, model)
    loaded = create_model("mobilenet_v1", pretrained=path)
    assert loaded.model_kwargs == {"width_mult": 0.25, "num_classes": 5, "padding": "same", "act": "relu6"}
    assert type(loaded.stem.conv).__name__ == "Conv2dSame"
    assert torch.equal(logits(loaded), logits(model))
    # an explicit option still wins
    assert create_model("mobilenet_v1", pretrained=path, act="relu").model_kwargs["act"] == "relu"


def test_other_width_is_named(saved):
    _, path = saved
    with pytest.raises(MobileNetsError) as e:
        create_model("mobilenet_v2_050", pretrained=str(path), num_classes=10)
    msg = one_line_error(e)
    assert msg.startswith(str(path)) and "missing" not in msg and "unexpected" not in msg
    assert "wrong shape: blocks.1.project.conv.weight (8, 48, 1, 1) vs (16, 48, 1, 1)" in msg


def test_other_architecture_is_named(saved):
    _, path = saved
    with pytest.raises(MobileNetsError) as e:
        create_model("mobilenet_v3_small", pretrained=str(path), num_classes=10)
    msg = one_line_error(e)
    assert "missing: " in msg and "unexpected: " in msg and "blocks.0.se.fc1.weight" in msg


def test_torch_checkpoint_weights_only(tmp_path, saved):
    model, _ = saved
    path = tmp_path / "ckpt.pth"
    torch.save({"model": model.state_dict(), "optimizer": {"lr": 0.1, "step": 7},
                "metadata": {"classes": ["a"] * 10}}, path)
    state, meta = load_weights(path)
    assert meta["classes"] == ["a"] * 10
    loaded = create_model("mobilenet_v2", pretrained=path, width_mult=0.35, num_classes=10)
    assert torch.equal(logits(loaded), logits(model))


class RunsCode:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("name", ["evil.pth", "evil.safetensors"])
@pytest.mark.parametrize("writer", ["torch.save", "pickle"])
def test_pickle_that_runs_code_is_refused(tmp_path, name, writer):
    # Renamed to .safetensors it must meet the same refusal: torch.load reads a *path* with that
    # suffix as safetensors and would answer with safetensors' own exception.
    marker = tmp_path / "code-ran"
    path = tmp_path / name
    payload = {"stem.0.weight": torch.zeros(1), "payload": RunsCode(marker)}
    if writer == "torch.save":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload, protocol=2))
    for load in (load_weights, lambda p: create_model("mobilenet_v2", pretrained=p), load_model):
        with pytest.raises(MobileNetsError) as e:
            load(path)
        msg = one_line_error(e)
        assert msg.startswith(f"{path}: refused to unpickle: it would import ")
    assert not marker.exists()


def test_pickle_of_plain_data_renamed_safetensors(tmp_path):
    # Newer pickle protocols fail on an opcode rather than on a global: still the one refusal.
    path = tmp_path / "data.safetensors"
    path.write_bytes(pickle.dumps({"weights": [1.0, 2.0]}, protocol=5))
    with pytest.raises(MobileNetsError) as e:
        load_weights(path)
    assert one_line_error(e).startswith(f"{path}: refused to unpickle: ")


@pytest.mark.parametrize("kind", ["safetensors", "pth"])
def test_truncated_file(tmp_path, saved, kind):
    model, spath = saved
    full = tmp_path / f"full.{kind}"
    if kind == "pth":
        torch.save(model.state_dict(), full)
    else:
        full = spath
    data = full.read_bytes()
    cut = tmp_path / f"cut.{kind}"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(MobileNetsError) as e:
        load_weights(cut)
    msg = one_line_error(e)
    assert msg.startswith(str(cut)) and ("truncated" in msg or "not a safetensors" in msg)


def test_not_a_checkpoint(tmp_path):
    path = tmp_path / "notes.safetensors"
    path.write_text("these are not weights\n")
    with pytest.raises(MobileNetsError) as e:
        load_weights(path)
    assert "not a safetensors file nor a torch checkpoint" in one_line_error(e)
    with pytest.raises(MobileNetsError, match="no such file"):
        load_weights(tmp_path / "absent.safetensors")
    empty = tmp_path / "empty.pth"
    torch.save({"epoch": 3}, empty)
    with pytest.raises(MobileNetsError, match="no state dict"):
        load_weights(empty)


@pytest.fixture
def server(tmp_path):
    """A local HTTP server for tmp_path/www: the one kind of URL reachable here."""
    root = tmp_path / "www"
    root.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    handler = functools.partial(Quiet, directory=str(root))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_url_download_is_cached(tmp_path, monkeypatch, saved, server):
    model, path = saved
    root, base = server
    cache = tmp_path / "cache"
    monkeypatch.setenv("MOBILENETS_CACHE", str(cache))
    (root / "v2.safetensors").write_bytes(path.read_bytes())
    loaded = create_model("mobilenet_v2", pretrained=f"{base}/v2.safetensors", width_mult=0.35,
                          num_classes=10)
    assert torch.equal(logits(loaded), logits(model))
    [cached] = cache.iterdir()
    assert cached.name.startswith("v2") and cached.suffix == ".safetensors"
    assert cached.read_bytes() == path.read_bytes()
    (root / "v2.safetensors").unlink()  # served once: the second use reads the cache
    assert resolve_weights(f"{base}/v2.safetensors") == cached
    assert torch.equal(logits(load_model(f"{base}/v2.safetensors")[0]), logits(model))


def test_two_urls_ending_in_the_same_name_are_two_downloads(tmp_path, monkeypatch, server):
    root, base = server
    monkeypatch.setenv("MOBILENETS_CACHE", str(tmp_path / "cache"))
    models = {}
    for folder, seed in (("a", 1), ("b", 2)):
        torch.manual_seed(seed)
        models[folder] = create_model("mobilenet_v2", width_mult=0.35, num_classes=10).eval()
        (root / folder).mkdir()
        save_weights(root / folder / "model.safetensors", models[folder])
    assert not torch.equal(logits(models["a"]), logits(models["b"]))
    for folder in ("a", "b", "a"):
        loaded, _ = load_model(f"{base}/{folder}/model.safetensors")
        assert torch.equal(logits(loaded), logits(models[folder])), folder
    assert len(list((tmp_path / "cache").iterdir())) == 2


def test_damaged_cached_copy_is_downloaded_again(tmp_path, monkeypatch, saved, server):
    model, path = saved
    root, base = server
    monkeypatch.setenv("MOBILENETS_CACHE", str(tmp_path / "cache"))
    url = f"{base}/v2.safetensors"
    (root / "v2.safetensors").write_bytes(path.read_bytes())
    cached = resolve_weights(url)
    cached.write_bytes(path.read_bytes()[:1000])           # a disk error, an interrupted copy
    loaded, _ = load_model(url)
    assert torch.equal(logits(loaded), logits(model)) and cached.read_bytes() == path.read_bytes()
    # Damaged again and no longer served: the error names the URL and the copy it deleted.
    cached.write_bytes(b"\0" * 100)
    (root / "v2.safetensors").unlink()
    with pytest.raises(MobileNetsError) as e:
        load_model(url)
    msg = one_line_error(e)
    assert msg.startswith(f"{url}: cannot download (HTTP 404") and f"cached copy {cached}" in msg
    assert not cached.exists()


def test_download_times_out(tmp_path, monkeypatch):
    # A server that accepts the connection and never answers.
    monkeypatch.setenv("MOBILENETS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(weights, "DOWNLOAD_TIMEOUT_S", 0.5)
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/v2.safetensors"
        start = time.monotonic()
        with pytest.raises(MobileNetsError) as e:
            resolve_weights(url)
        assert time.monotonic() - start < 10
    assert one_line_error(e) == f"{url}: cannot download (no answer within 0.5 s)"


def test_url_that_is_not_weights_leaves_nothing(tmp_path, monkeypatch, server):
    root, base = server
    cache = tmp_path / "cache"
    monkeypatch.setenv("MOBILENETS_CACHE", str(cache))
    (root / "page.safetensors").write_text("<html>login required</html>")
    with pytest.raises(MobileNetsError) as e:
        resolve_weights(f"{base}/page.safetensors")
    msg = one_line_error(e)
    # named by its URL, not by the temporary file it was downloaded to
    assert msg.startswith(f"{base}/page.safetensors: not a safetensors file") and ".tmp" not in msg
    with pytest.raises(MobileNetsError) as e:
        resolve_weights(f"{base}/missing.safetensors")
    assert "cannot download" in one_line_error(e) and "404" in str(e.value)
    assert not cache.exists() or list(cache.iterdir()) == []


def test_unreachable_url(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("MOBILENETS_CACHE", str(cache))
    url = "http://127.0.0.1:9/weights/v2.safetensors"  # discard port: nothing listens
    with pytest.raises(MobileNetsError) as e:
        create_model("mobilenet_v2", pretrained=url)
    msg = one_line_error(e)
    assert msg.startswith(url) and "cannot download" in msg
    assert not cache.exists() or list(cache.iterdir()) == []


def test_imagenet_classes():
    names = imagenet_classes()
    assert len(names) == 1000 == len(set(names))
    assert (names[0], names[1], names[999]) == ("tench", "goldfish", "toilet tissue")


def test_act_option():
    v1 = create_model("mobilenet_v1_025", act="relu6")
    assert isinstance(v1.stem.act, torch.nn.ReLU6) and isinstance(v1.blocks[0].project.act, torch.nn.ReLU6)
    assert isinstance(create_model("mobilenet_v1_025").stem.act, torch.nn.ReLU)
    with pytest.raises(MobileNetsError, match="applies to MobileNetV1/V2"):
        create_model("mobilenet_v3_small", act="relu6")
    with pytest.raises(MobileNetsError, match="act='gelu' is not one of"):
        create_model("mobilenet_v2", act="gelu")


@pytest.mark.slow
def test_safetensors_whose_header_length_starts_with_0x80(tmp_path):
    # The first byte of the header length is the pickle magic by chance; the file must still be
    # read as safetensors, metadata included.
    model = create_model("mobilenet_v2_035", num_classes=3)
    for pad in range(256):
        path = tmp_path / "w.safetensors"
        save_weights(path, model, {"note": "x" * pad})
        if path.read_bytes()[:1] == b"\x80":
            break
    else:
        pytest.skip("no padding gave a 0x80 first byte")
    state, meta = load_weights(path)
    assert meta["model"] == "mobilenet_v2_035" and meta["note"] == "x" * pad
    assert len(state) == len(model.state_dict())


def test_backbone_of_a_classifier_starts_a_segmenter(tmp_path):
    torch.manual_seed(0)
    classifier = create_model("mobilenet_v2", num_classes=10, width_mult=0.35)
    path = tmp_path / "cls.safetensors"
    save_weights(path, classifier)
    seg = create_model("deeplabv3_mobilenet_v2", num_classes=11, width_mult=0.35)
    head_before = {k: v.clone() for k, v in seg.state_dict().items() if k.startswith("head")}
    got = load_backbone(seg, path)
    theirs, ours = classifier.state_dict(), seg.state_dict()
    # the segmenter's backbone is its `backbone` child: the classifier's stem and blocks
    backbone = [k for k in ours if k.startswith("backbone.") and "num_batches" not in k]
    assert got == {"loaded": len(backbone), "backbone_tensors": len(backbone), "adapted": [], "skipped": []}
    assert len(backbone) > 200
    assert all(torch.equal(ours[k], theirs[k.removeprefix("backbone.")]) for k in backbone)
    assert all(torch.equal(ours[k], v) for k, v in head_before.items())     # the head stays
    # a grayscale classifier: the stem's convolution is adapted to colour input, so a colour
    # image whose channels are equal meets the grayscale classifier's first features
    gray_model = create_model("mobilenet_v2", num_classes=10, width_mult=0.35, in_chans=1).eval()
    gray = tmp_path / "gray.safetensors"
    save_weights(gray, gray_model)
    got = load_backbone(seg, gray)
    assert got["adapted"] == ["backbone.stem.conv.weight"] and got["skipped"] == []
    assert got["loaded"] == len(backbone)
    image = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        want = gray_model.stem.conv(image)
        have = seg.backbone.stem.conv(image.expand(-1, 3, -1, -1))
    torch.testing.assert_close(have, want, rtol=1e-5, atol=1e-5)
    # and a colour classifier's stem starts a grayscale model: the sum over its channels
    colour = classifier.stem.conv.weight.detach()
    gray_seg = create_model("deeplabv3_mobilenet_v2", num_classes=11, width_mult=0.35, in_chans=1)
    assert load_backbone(gray_seg, path)["adapted"] == ["backbone.stem.conv.weight"]
    with torch.no_grad():
        torch.testing.assert_close(gray_seg.backbone.stem.conv(image),
                                   torch.nn.functional.conv2d(image.expand(-1, 3, -1, -1), colour,
                                                              stride=2, padding=1))
    other = tmp_path / "wide.safetensors"
    save_weights(other, create_model("mobilenet_v2", num_classes=10, width_mult=1.0))
    with pytest.raises(MobileNetsError, match="wide.safetensors: shares no backbone tensor"):
        load_backbone(seg, other)


def sequential_layout(model, padding: str) -> dict:
    """The model's state dict as files written before ConvBNAct named its parts held it: a unit
    was a sequence, conv at 0 and BN at 1, or conv at 1 and BN at 2 where TF "same" padding put
    a padding module first (strided layers); a task model held its backbone's `stem`, `blocks`,
    `last_conv` at the top."""
    shifted = {name for name, m in model.named_modules()
               if isinstance(m, ConvBNAct) and padding == "same" and m.conv.stride[0] > 1}
    old = {}
    for key, tensor in model.state_dict().items():
        unit, part, param = key.rsplit(".", 2) if key.count(".") >= 2 else ("", "", key)
        if part in ("conv", "bn") and isinstance(model.get_submodule(unit), ConvBNAct):
            key = f"{unit}.{(unit in shifted) + (part == 'bn')}.{param}"
        old[key.removeprefix("backbone.")] = tensor
    return old


@pytest.mark.parametrize("padding", ["symmetric", "same"])
def test_files_in_the_sequential_layout_still_load(tmp_path, padding):
    model = tiny(padding=padding)
    old = sequential_layout(model, padding)
    first = "stem.1.weight" if padding == "same" else "stem.0.weight"
    assert old[first].dim() == 4 and "stem.conv.weight" not in old
    path = tmp_path / "old.safetensors"
    write_weights(path, old, {"format": "mobilenets/1", "model": "mobilenet_v2",
                              "model_kwargs": {"width_mult": 0.35, "num_classes": 10,
                                               "padding": padding}})
    loaded, _ = load_model(path)
    assert torch.equal(logits(loaded), logits(model))
    state = model.state_dict()
    assert upgrade_state(state, model) is state   # the current layout passes as it is


def test_task_model_files_in_the_old_layout_still_load(tmp_path):
    torch.manual_seed(0)
    model = create_model("ssdlite_mobilenet_v2", num_classes=3, width_mult=0.35).eval()
    old = sequential_layout(model, "symmetric")
    assert "stem.0.weight" in old and "box_heads.0.0.0.weight" in old and "box_heads.0.1.bias" in old
    path = tmp_path / "ssd.safetensors"
    write_weights(path, old, {"format": "mobilenets/1", "model": "ssdlite_mobilenet_v2", "task": "detection",
                              "model_kwargs": {"num_classes": 3, "width_mult": 0.35}})
    loaded, _ = load_model(path)
    with torch.no_grad():
        for a, b in zip(loaded.eval()(X), model(X)):
            assert torch.equal(a, b)
    # and a classifier takes a task model's backbone, whose names sit under `backbone.`
    new = tmp_path / "ssd_new.safetensors"
    save_weights(new, model)
    classifier = create_model("mobilenet_v2", width_mult=0.35, num_classes=10)
    got = load_backbone(classifier, new)
    assert got["loaded"] == got["backbone_tensors"] and got["skipped"] == []
    assert torch.equal(classifier.last_conv.conv.weight, model.backbone.last_conv.conv.weight)


# -- checksums ---------------------------------------------------------------------------------
def _recorded(data: bytes) -> str:
    at = data.find(b"sha256:") + len(b"sha256:")
    return data[at:at + 64].decode()


def test_weights_record_the_sha256_of_their_bytes(saved, capsys):
    from mobilenets.cli import main
    _, path = saved
    data = path.read_bytes()
    digest = _recorded(data)
    # the recipe: every byte of the file, the recorded digits read as zeros
    assert digest == hashlib.sha256(data.replace(digest.encode(), b"0" * 64)).hexdigest()
    assert load_weights(path)[1]["checksum"] == f"sha256:{digest}"
    assert main(["verify", str(path)]) == 0
    assert f"checksum ok (sha256 {digest[:16]}" in capsys.readouterr().out


@pytest.mark.parametrize("where", ["tensor", "class name"])
def test_flipped_weights_or_header_are_refused(saved, tmp_path, capsys, where):
    from mobilenets.cli import main
    _, path = saved
    data = bytearray(path.read_bytes())
    at = len(data) - 5000 if where == "tensor" else data.find(b'\\"c7\\"') + 2
    for i in range(20 if where == "tensor" else 1):
        data[at + 37 * i] ^= 0x04
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(bytes(data))
    recorded = _recorded(bytes(data))
    actual = hashlib.sha256(bytes(data).replace(recorded.encode(), b"0" * 64)).hexdigest()
    for load in (load_weights, load_model, lambda p: create_model("mobilenet_v2", pretrained=p)):
        with pytest.raises(MobileNetsError) as e:
            load(bad)
        assert one_line_error(e) == (f"{bad}: checksum mismatch: its metadata records sha256 {recorded}, "
                                     f"its content hashes to {actual}; the file is damaged or was "
                                     "changed after it was written")
    assert main(["verify", str(path), str(bad), "--json"]) == 1
    reports = json.loads(capsys.readouterr().out)
    assert [r["checksum"] for r in reports] == ["ok", "mismatch"]
    assert reports[1]["recorded"] == recorded and reports[1]["actual"] == actual


def test_weights_from_before_checksums_still_load(tmp_path, capsys):
    from safetensors.torch import save_file
    from mobilenets.cli import main
    model = tiny()
    old = tmp_path / "old.safetensors"
    save_file(model.state_dict(), str(old), metadata={"format": '"mobilenets/1"',
                                                     "model": '"mobilenet_v2"',
                                                     "model_kwargs": json.dumps(model.model_kwargs)})
    torch.testing.assert_close(logits(load_model(old)[0]), logits(model))
    assert main(["verify", str(old)]) == 0
    assert "no checksum recorded" in capsys.readouterr().out


def test_backbone_of_another_family_or_a_small_share_is_refused(tmp_path):
    v2 = tmp_path / "v2.safetensors"
    save_weights(v2, tiny())
    with pytest.raises(MobileNetsError) as e:
        load_backbone(create_model("mobilenet_v4_conv_small", width_mult=0.35), v2)
    assert one_line_error(e).startswith(f"{v2}: a mobilenet_v2 backbone cannot start "
                                        "mobilenet_v4_conv_small: another MobileNet family")
    small = tmp_path / "v3s.safetensors"
    save_weights(small, create_model("mobilenet_v3_small", width_mult=0.35))
    large = create_model("mobilenet_v3_large", width_mult=0.35)
    with pytest.raises(MobileNetsError, match=rf"v3s.safetensors: its mobilenet_v3_small backbone fills "
                                              r"only \d+ of mobilenet_v3_large's \d+ backbone tensors"):
        load_backbone(large, small)
