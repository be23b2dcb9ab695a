"""A small Fashion-MNIST-shaped model with batch-norm statistics from real images, saved as a
checkpoint: what the deploy tests export, quantize and predict with."""
import torch

import mobilenets
from mobilenets.deploy.bench import calibrate_batchnorm
from mobilenets.datasets.calibration import FASHION_MNIST_CLASSES, fashion_mnist, preprocessed
from mobilenets.models.weights import save_weights

PRE = dict(resolution=32, resize=32, mean=[0.286], std=[0.353], in_chans=1, interpolation="bilinear")


def fmnist_checkpoint(path, name="mobilenet_v2", **kw):
    torch.manual_seed(0)
    model = mobilenets.create_model(name, width_mult=0.35, small_input=True, in_chans=1,
                                    num_classes=10, **kw)
    # PyTorch's default Linear init: logits that differ between images, unlike the N(0, 0.01)
    # training init, so agreement tests compare predictions rather than noise around zero.
    model.classifier.reset_parameters()
    images, _ = fashion_mnist("train")
    calibrate_batchnorm(model, preprocessed(images[:128], PRE), batch=64)
    save_weights(path, model, {"classes": FASHION_MNIST_CLASSES, "preprocessing": PRE})
    return model.eval()


def fmnist_test_images(n=64):
    images, labels = fashion_mnist("test")
    return images[:n], labels[:n]


# Where `corrupted` flips bytes: 20 bytes spread from the middle of the file (the weights of
# any format here), one letter of a class name in the metadata, or 20 bytes near the start
# (the format's own header and graph tables).
CORRUPTIONS = ("weights", "metadata", "header")


def corrupted(src, dst, where):
    """A copy of `src` at `dst` with bytes flipped as CORRUPTIONS says."""
    data = bytearray(src.read_bytes())
    if where == "metadata":
        spots = [data.find(b"Trouser") + 3]
    elif where == "weights":
        spots = [len(data) // 2 + 97 * i for i in range(20)]
    else:
        spots = range(8, 28)
    for at in spots:
        data[at] ^= 0x04
    dst.write_bytes(bytes(data))
    return dst


def recorded_checksum(path) -> str:
    data = path.read_bytes()
    at = data.find(b"sha256:") + len(b"sha256:")
    return data[at:at + 64].decode()
