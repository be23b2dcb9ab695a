import os
import stat

import pytest

from mobilenets.core.io import atomic_path, atomic_write_text, remove_stale_temps


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


def test_a_writer_that_makes_its_own_file_gets_the_usual_mode(tmp_path):
    """safetensors writes a new 0600 file at the path it is given; the result is still 0644
    under the usual umask 022."""
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file
    old = os.umask(0o022)
    try:
        with atomic_path(tmp_path / "best.safetensors") as tmp:
            save_file({"w": torch.zeros(2)}, str(tmp))
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "best.safetensors").st_mode) == 0o644


def test_data_and_directory_are_synced_around_the_rename(tmp_path, monkeypatch):
    events = []
    fsync, replace = os.fsync, os.replace

    def record_fsync(fd):
        events.append(("fsync", os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))))
        fsync(fd)

    def record_replace(a, b):
        events.append(("replace", os.path.basename(b)))
        replace(a, b)
    monkeypatch.setattr(os, "fsync", record_fsync)
    monkeypatch.setattr(os, "replace", record_replace)
    target = tmp_path / "last.pt"
    with atomic_path(target) as tmp:
        tmp.write_bytes(b"state")
    assert events == [("fsync", tmp.name), ("replace", "last.pt"), ("fsync", tmp_path.name)]
    assert target.read_bytes() == b"state"


def test_stale_temp_files_are_recognised_by_name(tmp_path):
    with atomic_path(tmp_path / "last.pt") as tmp:
        tmp.write_bytes(b"state")
    (tmp_path / tmp.name).write_bytes(b"half")   # what a write killed by SIGKILL leaves behind
    others = ["last.pt", "notes.tmp", ".hidden.tmp", ".last.pt.toolongname.tmp"]
    for name in others[1:]:
        (tmp_path / name).write_text("not ours")
    assert [p.name for p in remove_stale_temps(tmp_path)] == [tmp.name]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(others)
