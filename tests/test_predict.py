import pytest
import torch
from PIL import Image

from mobilenets.cli import main
from mobilenets.data import FMNIST_CLASSES, load_fashion_mnist
from mobilenets.errors import MobileNetsError
from mobilenets.predict import Predictor
from mobilenets.train import DEFAULTS, load_recipe, train


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("pred")
    cfg = {**DEFAULTS, **load_recipe("fashion-mnist"), "recipe": "fashion-mnist", "limit_train": 128,
           "limit_val": 64, "batch_size": 32, "epochs": 1, "lr": 0.03}
    train(cfg, out, progress=False)
    x, y = load_fashion_mnist(download=False)["test"]
    files = []
    for i in range(4):
        f = out / f"test{i}.png"
        Image.fromarray(x[i, 0].numpy(), "L").save(f)
        files.append(f)
    return out / "best.safetensors", files, x[:4], y[:4]


def test_predictor_matches_the_training_preprocessing(trained):
    ckpt, files, x, _ = trained
    p = Predictor(ckpt)
    assert p.classes == FMNIST_CLASSES and p.resolution == 28 and p.in_chans == 1
    # PNG → PIL → transforms must give exactly the tensor the trainer evaluated on.
    from_files = torch.stack([p.load_image(f) for f in files])
    from_tensor = (x.float() / 255 - 0.2860) / 0.3530
    assert torch.allclose(from_files, from_tensor, atol=1e-6)
    results = p.predict([str(f) for f in files], k=3)
    logits = p.backend(from_tensor)
    for (name, top), row in zip(results, logits.softmax(1)):
        assert [c for c, _ in top] == [FMNIST_CLASSES[i] for i in row.topk(3).indices.tolist()]
        probs = [q for _, q in top]
        assert probs == sorted(probs, reverse=True) and abs(probs[0] - row.max().item()) < 1e-6


def test_predict_cli_one_line_per_file(trained, tmp_path, capsys):
    ckpt, files, _, _ = trained
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    rc = main(["predict", str(ckpt), str(files[0]), str(broken), str(tmp_path / "absent.jpg"), "--topk", "2"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert rc == 0 and len(lines) == 3
    assert lines[0].startswith(f"{files[0]}: ") and len(lines[0].split("  ")) == 2
    assert lines[1].startswith(f"{broken}: error: unreadable image")
    assert lines[2] == f"{tmp_path / 'absent.jpg'}: error: no such file"
    assert main(["predict", str(ckpt), str(broken)]) == 1


def test_unsupported_model_file(tmp_path):
    f = tmp_path / "model.bin"
    f.write_bytes(b"x")
    with pytest.raises(MobileNetsError, match=r"model\.bin: unsupported model file; allowed: \.safetensors"):
        Predictor(f)
