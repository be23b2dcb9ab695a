import os
import stat

import pytest

from mobilenets.core.io import atomic_path, atomic_write_text


def test_atomic_write_replaces_whole_and_keeps_normal_permissions(tmp_path):
    target = tmp_path / "sub" / "report.json"
    atomic_write_text(target, "one")
    atomic_write_text(target, "two")
    assert target.read_text() == "two"
    mode = stat.S_IMODE(os.stat(target).st_mode)
    assert mode == 0o666 & ~_umask()
    assert [p.name for p in target.parent.iterdir()] == ["report.json"]


def test_failed_write_leaves_nothing(tmp_path):
    target = tmp_path / "model.onnx"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("export failed")
    assert list(tmp_path.iterdir()) == []


def _umask() -> int:
    m = os.umask(0)
    os.umask(m)
    return m
