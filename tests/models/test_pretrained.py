"""Published weights end to end: upstream-format files made here from random weights, served
from a loopback HTTP server as torchvision's download site and as the Hugging Face Hub (through
huggingface_hub's own endpoint setting), fetched, hash-checked, converted and cached."""
import dataclasses
import hashlib
import http.server
import os
import threading
import warnings
from pathlib import Path

import pytest
import torch

os.environ.setdefault("KERAS_BACKEND", "torch")  # before anything imports keras

import mobilenets
from mobilenets.core.errors import MobileNetsError
from mobilenets.models import pretrained, registry_weights

torchvision = pytest.importorskip("torchvision")
huggingface_hub = pytest.importorskip("huggingface_hub")
timm = pytest.importorskip("timm")


class Server:
    """Static files: `/files/<name>` as a plain URL, `/<repo>/resolve/<rev>/<file>` as the Hub
    answers it (X-Repo-Commit, ETag = the file's SHA-256)."""

    def __init__(self, root: Path):
        root_dir = root

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _answer(self, body: bool):
                parts = self.path.split("?")[0].strip("/").split("/")
                if parts[0] == "files":
                    path = root_dir / parts[1]
                elif "resolve" in parts:
                    i = parts.index("resolve")
                    path = root_dir / "hub" / "--".join(parts[:i]) / "/".join(parts[i + 2:])
                else:
                    path = root_dir / "missing"
                if not path.is_file():
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                data = path.read_bytes()
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
                self.send_header("X-Repo-Commit", "0" * 40)
                self.end_headers()
                if body:
                    self.wfile.write(data)

            def do_HEAD(self):
                self._answer(False)

            def do_GET(self):
                self._answer(True)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def served(tmp_path, monkeypatch):
    monkeypatch.setenv("MOBILENETS_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "www"
    root.mkdir()
    server = Server(root)
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    yield root, server
    server.stop()


def _use_entry(monkeypatch, entry):
    entries = [w for w in registry_weights.WEIGHTS if w.name != entry.name] + [entry]
    monkeypatch.setattr(registry_weights, "WEIGHTS", tuple(entries))


def _torchvision_file(root: Path) -> tuple[Path, torch.nn.Module]:
    torch.manual_seed(0)
    source = torchvision.models.mobilenet_v3_small().eval()
    path = root / "upstream.pth"
    torch.save(source.state_dict(), path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:8]
    named = root / f"mobilenet_v3_small-{digest}.pth"
    path.rename(named)
    return named, source


def _serve_torchvision(root: Path, server, monkeypatch):
    """A torchvision V3-Small file served as the registry's default V3-Small entry:
    (file, source model, entry)."""
    path, source = _torchvision_file(root)
    entry = dataclasses.replace(registry_weights.default_for("mobilenet_v3_small"),
                                url=f"{server.url}/files/{path.name}",
                                hash_prefix=path.stem.rsplit("-", 1)[1])
    _use_entry(monkeypatch, entry)
    return path, source, entry


def _images():
    return torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))


def test_torchvision_download_hash_conversion_and_offline_cache(served, monkeypatch):
    root, server = served
    path, source, entry = _serve_torchvision(root, server, monkeypatch)
    model = mobilenets.create_model("mobilenet_v3_small", pretrained=True).eval()
    with torch.no_grad():
        torch.testing.assert_close(model(_images()), source(_images()), rtol=1e-4, atol=1e-4)
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    converted = list((Path(pretrained.cache_dir()) / "pretrained").iterdir())
    assert [p.name for p in converted] == [f"{entry.name}-{sha[:16]}.safetensors"]
    assert model.pretrained_cfg["tag"] == "mobilenet_v3_small.IMAGENET1K_V1"
    assert model.pretrained_cfg["top1"] == 67.668   # torchvision's meta["_metrics"]
    server.stop()
    again = mobilenets.create_model("mobilenet_v3_small.IMAGENET1K_V1", pretrained=True).eval()
    with torch.no_grad():
        torch.testing.assert_close(again(_images()), source(_images()), rtol=1e-4, atol=1e-4)


def test_wrong_hash_is_refused_and_nothing_is_cached(served, monkeypatch):
    root, server = served
    path, _ = _torchvision_file(root)
    entry = dataclasses.replace(registry_weights.default_for("mobilenet_v3_small"),
                                url=f"{server.url}/files/{path.name}", hash_prefix="00000000")
    _use_entry(monkeypatch, entry)
    with pytest.raises(MobileNetsError, match="refused.*00000000"):
        mobilenets.create_model("mobilenet_v3_small", pretrained=True)
    cache = Path(pretrained.cache_dir())
    assert not [p for p in cache.rglob("*") if p.is_file()]


def test_offline_error_names_url_and_drop_path(served, monkeypatch):
    root, server = served
    entry = dataclasses.replace(registry_weights.default_for("mobilenet_v3_small"),
                                url=f"{server.url}/files/absent-12345678.pth")
    _use_entry(monkeypatch, entry)
    server.stop()
    with pytest.raises(MobileNetsError) as e:
        mobilenets.create_model("mobilenet_v3_small", pretrained=True)
    text = str(e.value)
    assert "\n" not in text and entry.url in text
    assert str(Path(pretrained.cache_dir()) / "upstream" / "absent-12345678.pth") in text


def _hub_file(root: Path, repo: str, timm_name: str) -> torch.nn.Module:
    from safetensors.torch import save_file
    torch.manual_seed(0)
    source = timm.create_model(timm_name, num_classes=1000).eval()
    folder = root / "hub" / repo.replace("/", "--")
    folder.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in source.state_dict().items()},
              str(folder / "model.safetensors"))
    return source


def test_hub_download_num_classes_and_in_chans(served):
    root, server = served
    repo = "timm/mobilenetv4_conv_small.e2400_r224_in1k"
    source = _hub_file(root, repo, "mobilenetv4_conv_small")
    model = mobilenets.create_model("mobilenet_v4_conv_small", pretrained=f"hf-hub:{repo}").eval()
    with torch.no_grad():
        torch.testing.assert_close(model(_images()), source(_images()), rtol=1e-4, atol=1e-4)
    server.stop()  # from here on, the converted copy only
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ten = mobilenets.create_model("mobilenet_v4_conv_small.e2400_r224_in1k", pretrained=True,
                                      num_classes=10)
    assert ten.classifier.out_features == 10
    assert sum("classifier is dropped" in str(w.message) for w in caught) == 1
    gray = mobilenets.create_model("mobilenet_v4_conv_small.e2400_r224_in1k", pretrained=True,
                                   in_chans=1).eval()
    assert timm.data.resolve_data_config(model=gray)["input_size"] == (1, 224, 224)
    assert (ten.pretrained_cfg["num_classes"], ten.pretrained_cfg["top1"]) == (10, 73.756)
    features = mobilenets.create_model("mobilenet_v4_conv_small.e2400_r224_in1k", pretrained=True,
                                       features_only=True).eval()
    with torch.no_grad():
        _, maps = model.forward_intermediates(_images())
        for got, want in zip(features(_images()), maps):
            torch.testing.assert_close(got, want)
    x = _images()[:, :1]
    with torch.no_grad():  # a gray image as one channel = the same image as three equal ones
        torch.testing.assert_close(gray(x), source(x.repeat(1, 3, 1, 1)), rtol=1e-4, atol=1e-4)


def test_hub_file_that_is_not_its_etag_is_refused(served, monkeypatch):
    root, server = served
    repo = "timm/mobilenetv4_conv_small.e2400_r224_in1k"
    _hub_file(root, repo, "mobilenetv4_conv_small")
    real = huggingface_hub.get_hf_file_metadata

    def lying(*args, **kwargs):
        return dataclasses.replace(real(*args, **kwargs), etag="f" * 64)

    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", lying)
    with pytest.raises(MobileNetsError, match="refused"):
        mobilenets.create_model("mobilenet_v4_conv_small", pretrained=f"hf-hub:{repo}")
    cache = Path(pretrained.cache_dir())
    assert not list(cache.glob("pretrained/*")) and not list(cache.rglob("blobs/*"))


def test_keras_h5_download_md5_conversion_and_cache(served, monkeypatch):
    keras = pytest.importorskip("keras")
    if keras.backend.backend() != "torch":
        pytest.skip("keras runs on another backend in this process")
    root, server = served
    keras.utils.set_random_seed(0)
    source = keras.applications.MobileNetV2(alpha=0.35, input_shape=(224, 224, 3), weights=None,
                                            classifier_activation=None)
    path = root / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224.h5"
    source.save(str(path))   # the legacy HDF5 layout of the published application files
    md5 = hashlib.md5(path.read_bytes()).hexdigest()
    entry = dataclasses.replace(registry_weights.by_name()["mobilenet_v2_035.keras_imagenet"],
                                url=f"{server.url}/files/{path.name}", md5=md5)
    _use_entry(monkeypatch, dataclasses.replace(entry, md5="0" * 32))
    with pytest.raises(MobileNetsError, match="refused, its MD5"):
        mobilenets.create_model("mobilenet_v2_035.keras_imagenet", pretrained=True)
    assert not [p for p in Path(pretrained.cache_dir()).rglob("*") if p.is_file()]
    _use_entry(monkeypatch, entry)
    model = mobilenets.create_model("mobilenet_v2_035.keras_imagenet", pretrained=True).eval()
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    want = torch.from_numpy(keras.ops.convert_to_numpy(source(x.permute(0, 2, 3, 1).numpy(), training=False)))
    with torch.no_grad():
        torch.testing.assert_close(model(x), want.float(), rtol=1e-4, atol=1e-4)
    assert [list(model.pretrained_cfg[k]) for k in ("mean", "std")] == [[0.5] * 3, [0.5] * 3]
    server.stop()   # converted once, cached: no download the second time
    mobilenets.create_model("mobilenet_v2_035.keras_imagenet", pretrained=True)


@pytest.mark.slow
def test_cli_train_starts_from_published_weights(served, monkeypatch, tmp_path, capsys):
    from mobilenets.cli import main
    root, server = served
    path, _, entry = _serve_torchvision(root, server, monkeypatch)
    tiny = ["--data", "fashion-mnist", "--epochs", "1", "--batch-size", "16", "--model",
            "mobilenet_v3_small", "--width-mult", "1.0", "--set", "limit_train=32", "--set", "limit_val=16",
            "--set", "limit_test=16", "--set", "resolution=32"]
    server.stop()
    assert main(["train", *tiny, "--pretrained", "--out", str(tmp_path / "offline")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert entry.url in err[-1] and "upstream" in err[-1]
    server = Server(root)
    monkeypatch.setattr(registry_weights, "WEIGHTS", tuple(
        dataclasses.replace(w, url=f"{server.url}/files/{path.name}") if w.name == entry.name else w
        for w in registry_weights.WEIGHTS))
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert main(["train", *tiny, "--pretrained", "IMAGENET1K_V1", "--out", str(tmp_path / "run")]) == 0
    finally:
        server.stop()
    assert any("1000-class classifier is dropped" in str(w.message) for w in caught)


def test_export_and_quantize_take_published_weights_by_name(served, monkeypatch, tmp_path, capsys):
    import onnxruntime as ort
    from mobilenets.cli import main
    root, server = served
    _, source, _ = _serve_torchvision(root, server, monkeypatch)
    out = tmp_path / "v3s.onnx"
    assert main(["export", "mobilenet_v3_small", "--pretrained", "IMAGENET1K_V1", "--format", "onnx",
                 "--out", str(out), "--no-check"]) == 0
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        want = source(x)
    got = torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])
    torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-3)
    capsys.readouterr()
    assert main(["quantize", str(out), "--pretrained", "--out", str(tmp_path / "q.onnx")]) == 2
    assert capsys.readouterr().err == (f"mobilenets: error: {out}: --pretrained takes a model name, "
                                       "not a weights file\n")
