"""The checksum recipe on hand-made files: the expected digests are derived here from the recipe
docs/deploy.md states (hashlib over the bytes with the digits zeroed), not from the code."""
import hashlib
import json
import struct
import zipfile

import pytest

from mobilenets import MobileNetsError
from mobilenets.core.checksum import (PLACEHOLDER, ChecksumMismatch, check_flat, check_zip,
                                      flat_digest, seal_file, seal_zip, zip_digest)

ZEROS = "sha256:" + "0" * 64


def flat_file(path, meta):
    """Bytes before, the metadata JSON, bytes after: a format that stores its metadata verbatim."""
    path.write_bytes(b"HEAD" + bytes(range(256)) * 4 + json.dumps(meta).encode() + b"\x00" * 300 + b"TAIL")
    return path


def test_sealed_flat_file_hashes_with_its_digits_zeroed(tmp_path):
    path = flat_file(tmp_path / "m.bin", {"format": "mobilenets/1", "checksum": PLACEHOLDER})
    before = path.read_bytes()
    digest = seal_file(path)
    after = path.read_bytes()
    assert digest == hashlib.sha256(before).hexdigest()          # the file as written, zeros in place
    assert after == before.replace(ZEROS.encode(), f"sha256:{digest}".encode())
    assert check_flat(path) == digest
    assert flat_digest(path) == (digest, digest)


@pytest.mark.parametrize("where", ["weights", "metadata", "digits"])
def test_flipped_byte_is_a_mismatch_naming_both_hashes(tmp_path, where):
    path = flat_file(tmp_path / "m.bin", {"format": "mobilenets/1", "classes": ["cat"], "checksum": PLACEHOLDER})
    digest = seal_file(path)
    data = bytearray(path.read_bytes())
    at = {"weights": 500, "metadata": data.find(b"cat"), "digits": data.find(b"sha256:") + 7}[where]
    data[at] ^= 0x01
    path.write_bytes(bytes(data))
    recorded = data[data.find(b"sha256:") + 7:][:64].decode()
    zeroed = bytes(data).replace(f"sha256:{recorded}".encode(), ZEROS.encode())
    actual = hashlib.sha256(zeroed).hexdigest()
    assert recorded != actual
    with pytest.raises(ChecksumMismatch) as e:
        check_flat(path)
    message = str(e.value)
    assert message.startswith(f"{path}: checksum mismatch") and "\n" not in message
    assert recorded in message and actual in message
    assert (recorded == digest) == (where != "digits")


def test_file_without_checksum_and_damaged_field(tmp_path):
    old = flat_file(tmp_path / "old.bin", {"format": "mobilenets/1"})
    assert flat_digest(old) is None and check_flat(old) is None
    damaged = flat_file(tmp_path / "bad.bin", {"format": "mobilenets/1", "checksum": "sha257:" + "1" * 64})
    with pytest.raises(MobileNetsError, match=r"bad.bin: its checksum field is damaged"):
        check_flat(damaged)


def write_archive(path, meta, weights=b"\x01\x02" * 500):
    """A zip laid out as torch writes one: a prefix folder, stored and deflated members."""
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("arch/data/0", weights, compress_type=zipfile.ZIP_STORED)
        z.writestr("arch/code/model.py", b"def forward(x): return x\n" * 20,
                   compress_type=zipfile.ZIP_DEFLATED)
        z.writestr("arch/extra/mobilenets.json", json.dumps(meta))
        z.writestr("arch/.data/serialization_id", str(len(json.dumps(meta))))


def recipe_digest(path):
    """The zip recipe: members in order but serialization_id, name without its first component,
    NUL, length (8 bytes LE), content with the recorded digits zeroed."""
    h = hashlib.sha256()
    with zipfile.ZipFile(path) as z:
        for info in z.infolist():
            name = info.filename.split("/", 1)[1]
            if name == ".data/serialization_id":
                continue
            data = z.read(info)
            if name == "extra/mobilenets.json":
                meta = json.loads(data)
                data = json.dumps({**meta, "checksum": ZEROS}).encode()
            h.update(name.encode() + b"\0" + struct.pack("<Q", len(data)) + data)
    return h.hexdigest()


def test_sealed_zip_hashes_its_members(tmp_path):
    path = tmp_path / "m.ts"
    digest = seal_zip(path, lambda meta: write_archive(path, meta), {"format": "mobilenets/1"},
                      "mobilenets.json")
    assert digest == recipe_digest(path)
    with zipfile.ZipFile(path) as z:
        assert json.loads(z.read("arch/extra/mobilenets.json"))["checksum"] == f"sha256:{digest}"
    assert check_zip(path, "mobilenets.json", "TorchScript file") == digest
    # a flipped weight byte: zipfile's CRC would refuse to read it; the checksum names both hashes
    data = bytearray(path.read_bytes())
    data[data.find(b"\x01\x02\x01\x02") + 100] ^= 0x40
    path.write_bytes(bytes(data))
    recorded, actual, _ = zip_digest(path, "mobilenets.json")
    assert recorded == digest and actual != digest
    with pytest.raises(ChecksumMismatch, match=rf"m.ts: checksum mismatch: .*{digest}.*{actual}"):
        check_zip(path, "mobilenets.json", "TorchScript file")


@pytest.mark.parametrize("blob", [b"", b"\x80\x04K\x01.", b"PK\x03\x04" + b"\x00" * 20])
def test_not_a_zip_is_one_line(tmp_path, blob):
    path = tmp_path / "x.pt2"
    path.write_bytes(blob)
    with pytest.raises(MobileNetsError, match=r"x.pt2: (is empty \(0 bytes\)|not a torch.export file)") as e:
        check_zip(path, "mobilenets.json", "torch.export file")
    assert "\n" not in str(e.value)
