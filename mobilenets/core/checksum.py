"""Content checksums of model files: a SHA-256 recorded in the file's own mobilenets metadata as
`"checksum": "sha256:<64 hex digits>"`, which loaders check before a model runs.

The recorded value cannot hash itself, so the hash is taken with those 64 digits read as 64
ASCII zeros (`PLACEHOLDER`):
- a flat file (safetensors, ONNX, ExecuTorch .pte, LiteRT .tflite) stores its metadata text
  verbatim, so the hash is SHA-256 of every byte of the file with the recorded digits zeroed.
  A writer writes the file with the placeholder, hashes it and patches the 64 digits in place
  (`seal_file`): no offset, length or header changes. The digits are found in the bytes, not
  through the format's parser, so a file is checked before its runtime reads it.
- a zip archive (TorchScript .ts, torch.export .pt2) has a CRC-32 per member, which the digits
  would change, and an archive prefix named after the file, so the hash is taken over its
  members (`zip_digest`): in archive order, each member's name without its first path
  component, a NUL, its length as 8 little-endian bytes and its uncompressed content, the
  metadata member with its digits zeroed. `.data/serialization_id` is left out: an identifier
  the writer derives from the contents, not something the model runs on.
The checksum guards against damage (a copy cut short, a bit flipped on flash, a wrong file), not
against forgery: whoever can edit a file can recompute it.
"""
from __future__ import annotations

import hashlib
import mmap
import os
import re
import struct
import zipfile
import zlib
from pathlib import Path

from .errors import MobileNetsError

CHECKSUM_KEY = "checksum"
ALGORITHM = "sha256"
PLACEHOLDER = f"{ALGORITHM}:" + "0" * 64
# The recorded value wherever the metadata text sits (a JSON string, or one escaped inside
# another as safetensors' string-to-string metadata has it).
RECORDED = re.compile(rb"sha256:([0-9a-f]{64})")
# Members of a zip archive that are not hashed (see the module docstring).
UNHASHED_MEMBERS = (".data/serialization_id",)
_CHUNK = 1 << 20


class ChecksumMismatch(MobileNetsError):
    """A file whose content does not hash to the checksum its metadata records."""


def with_placeholder(meta: dict) -> dict:
    """`meta` with the checksum field a writer fills in after the file is written."""
    return {**{k: v for k, v in meta.items() if k != CHECKSUM_KEY}, CHECKSUM_KEY: PLACEHOLDER}


def _digits_at(data) -> list[tuple[int, str]]:
    return [(m.start(1), m.group(1).decode()) for m in RECORDED.finditer(data)]


def _hash_with_zeros(data, at: int) -> str:
    h = hashlib.sha256()
    h.update(data[:at])
    h.update(b"0" * 64)
    h.update(data[at + 64:])
    return h.hexdigest()


def _refuse_damaged_field(data, path) -> None:
    """A file whose metadata names a checksum but holds no readable value was damaged there;
    read as a file from before checksums, it would load unchecked."""
    if data.find(f'"{CHECKSUM_KEY}"'.encode()) >= 0:
        raise ChecksumMismatch(f"{path}: its checksum field is damaged (no {ALGORITHM} value after "
                               f"the {CHECKSUM_KEY!r} key); the file is damaged")


def seal_file(path: str | os.PathLike) -> str:
    """Hash a flat file written with `PLACEHOLDER` in its metadata and write the hash over the
    placeholder's digits, in place; returns the hex digest."""
    path = Path(path)
    with open(path, "r+b") as f, mmap.mmap(f.fileno(), 0) as data:
        spots = [at for at, digits in _digits_at(data) if digits == "0" * 64]
        if len(spots) != 1:
            raise MobileNetsError(f"{path}: expected one checksum placeholder in the written file, "
                                  f"found {len(spots)}")
        digest = _hash_with_zeros(data, spots[0])
        data[spots[0]:spots[0] + 64] = digest.encode()
        data.flush()
    return digest


def flat_digest(path: str | os.PathLike) -> tuple[str, str] | None:
    """(recorded, actual) hex digests of a flat file, or None when it records no checksum."""
    path = Path(path)
    if path.stat().st_size == 0:
        return None
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
        found = _digits_at(data)
        if not found:
            _refuse_damaged_field(data, path)
            return None
        if len({digits for _, digits in found}) > 1:
            raise MobileNetsError(f"{path}: records {len(found)} different checksums; a mobilenets "
                                  "file records one")
        return found[0][1], _hash_with_zeros(data, found[0][0])


def _member_bytes(archive: zipfile.ZipFile, info: zipfile.ZipInfo, path: Path) -> bytes:
    """A member's content read without zipfile's CRC-32 check, so that a damaged member gives
    the hash it now has rather than an exception."""
    archive.fp.seek(info.header_offset)
    header = archive.fp.read(30)
    if len(header) < 30 or header[:4] != b"PK\x03\x04":
        raise MobileNetsError(f"{path}: zip member {info.filename!r} has no local header")
    name_len, extra_len = struct.unpack("<HH", header[26:30])
    archive.fp.seek(info.header_offset + 30 + name_len + extra_len)
    raw = archive.fp.read(info.compress_size)
    if info.compress_type == zipfile.ZIP_STORED:
        return raw
    if info.compress_type == zipfile.ZIP_DEFLATED:
        try:
            return zlib.decompress(raw, -15)
        except zlib.error:
            raise MobileNetsError(f"{path}: zip member {info.filename!r} cannot be decompressed "
                                  "(the file is damaged)") from None
    raise MobileNetsError(f"{path}: zip member {info.filename!r} uses compression "
                          f"{info.compress_type}; allowed: stored or deflated")


def open_zip(path: str | os.PathLike, what: str) -> zipfile.ZipFile:
    """The zip archive at `path`; one line when the file is empty, cut short or not a zip."""
    path = Path(path)
    if not path.is_file():
        raise MobileNetsError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise MobileNetsError(f"{path}: is empty (0 bytes)")
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError) as e:
        raise MobileNetsError(f"{path}: not a {what} (not a zip archive, or cut short: "
                              f"{(str(e).splitlines() or [type(e).__name__])[0][:80]})") from None


def zip_digest(path: str | os.PathLike, metadata_member: str,
               what: str = "zip archive") -> tuple[str | None, str, bytes | None]:
    """(recorded hex digest or None, actual hex digest, metadata member's text or None) of a
    zip archive whose metadata is the member ending in `/metadata_member`."""
    path = Path(path)
    h = hashlib.sha256()
    recorded, text = None, None
    with open_zip(path, what) as archive:
        try:
            infos = archive.infolist()
            for info in infos:
                name = info.filename.split("/", 1)[-1]
                if name in UNHASHED_MEMBERS or info.is_dir():
                    continue
                data = _member_bytes(archive, info, path)
                if name.endswith(metadata_member) and name.rsplit("/", 1)[-1] == metadata_member:
                    text = data
                    found = _digits_at(data)
                    if not found:
                        _refuse_damaged_field(data, path)
                    else:
                        recorded = found[0][1]
                        at = found[0][0]
                        data = data[:at] + b"0" * 64 + data[at + 64:]
                h.update(name.encode() + b"\0" + struct.pack("<Q", len(data)))
                h.update(data)
        except (OSError, struct.error, ValueError) as e:
            raise MobileNetsError(f"{path}: not a readable {what} ({type(e).__name__})") from None
    return recorded, h.hexdigest(), text


def mismatch(path, recorded: str, actual: str) -> ChecksumMismatch:
    return ChecksumMismatch(f"{path}: checksum mismatch: its metadata records sha256 {recorded}, "
                           f"its content hashes to {actual}; the file is damaged or was changed "
                           "after it was written")


def check_flat(path: str | os.PathLike) -> str | None:
    """Refuse a flat file whose content does not hash to its recorded checksum; returns the
    digest, or None when none is recorded (files written before checksums)."""
    result = flat_digest(path)
    if result is None:
        return None
    recorded, actual = result
    if recorded != actual:
        raise mismatch(path, recorded, actual)
    return actual


def check_zip(path: str | os.PathLike, metadata_member: str, what: str) -> str | None:
    """`check_flat` for a zip archive (see `zip_digest`)."""
    recorded, actual, _ = zip_digest(path, metadata_member, what)
    if recorded is None:
        return None
    if recorded != actual:
        raise mismatch(path, recorded, actual)
    return actual


def seal_zip(path: str | os.PathLike, write, meta: dict, metadata_member: str) -> str:
    """Write a zip archive twice through `write(meta)`: with the placeholder, to hash it, then
    with the digest. Returns the digest; raises if the writer's second archive differs from its
    first anywhere but in the digits (a writer that is not deterministic)."""
    write(with_placeholder(meta))
    _, digest, _ = zip_digest(path, metadata_member)
    write({**with_placeholder(meta), CHECKSUM_KEY: f"{ALGORITHM}:{digest}"})
    recorded, actual, _ = zip_digest(path, metadata_member)
    if recorded != digest or actual != digest:
        raise MobileNetsError(f"{path}: the archive changed between two writes of the same model; "
                              "cannot record its checksum")
    return digest
