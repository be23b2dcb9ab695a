import os

import pytest
import torch

from mobilenets.datasets.fashion_mnist import FMNIST_FILES, fashion_mnist_places
from mobilenets.datasets.scenes import write_scenes

# The shared scene set: COCO + VOC files built from the real Fashion-MNIST items.
SCENES = dict(train=12, val=6, size=64, seed=4)


def fashion_mnist_present() -> bool:
    """Each of the four idx files (or its .gz) in a place the reader looks without downloading:
    $MOBILENETS_DATA, /usr/share/datasets/fashion-mnist."""
    places = fashion_mnist_places()
    return all(any((d / stem).is_file() or (d / f"{stem}.gz").is_file() for d in places)
               for stem in FMNIST_FILES)


def pytest_configure(config):
    """Under pytest-xdist each worker shares the cores with the others: one intra-op thread per
    worker (and per process it starts), since OpenMP's spinning threads from two workers on two
    cores stall each other (see `one_thread`). OMP_NUM_THREADS set by the caller wins."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


def pytest_collection_modifyitems(config, items):
    if fashion_mnist_present():
        return
    searched = ", ".join(dict.fromkeys(str(p) for p in fashion_mnist_places()))
    skip = pytest.mark.skip(reason=f"needs Fashion-MNIST, found in none of {searched} "
                                   "(apt-get install dataset-fashion-mnist or set MOBILENETS_DATA)")
    for item in items:
        if "needs_fmnist" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def one_thread():
    """One intra-op thread for tests on small tensors: a second thread buys nothing there, and
    when other processes share the 2 cores its synchronisation stalls cost 10-25x wall time
    (measured: tests/test_tasks.py 72 s -> 2.4 s under load average 7)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def scene_args():
    return dict(SCENES)


@pytest.fixture(scope="session")
def scenes(tmp_path_factory, scene_args):
    root = tmp_path_factory.mktemp("scenes")
    write_scenes(root, **scene_args, progress=False)
    return root


@pytest.fixture
def interrupt_at(monkeypatch):
    """interrupt_at(split_class, n): the n-th training batch that `split_class.batches` yields
    raises KeyboardInterrupt, as Ctrl-C would; the function it returns undoes that."""
    def arm(split_class, n):
        original, seen = split_class.batches, [0]

        def batches(self, *a, **kw):
            for item in original(self, *a, **kw):
                seen[0] += self.augment not in (None, False)   # a training split
                if seen[0] == n:
                    raise KeyboardInterrupt
                yield item
        monkeypatch.setattr(split_class, "batches", batches)
        return lambda: monkeypatch.setattr(split_class, "batches", original)
    return arm
