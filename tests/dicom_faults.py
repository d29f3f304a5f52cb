"""Deterministic bad DICOM inputs built from the real series (issue 19), one function each.

Used by ``tests/test_dicom_containment.py``, ``tests/test_dicom_fuzz.py`` and
``benchmarks/fuzz_dicom.py``. Every function copies real files into ``dst`` and damages them in
one documented way; nothing is random unless a seed is given.
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import pydicom
from pydicom.encaps import generate_frames

RICORD = "ricord-1a-000082-jpegll"
#: Offset, inside the JPEG Lossless codestream, of the byte flipped by the crash input: the first
#: code-length count of the DHT segment (FFC4 at 38, length at 40, class/id at 42). Found by a
#: byte-flip search over RICORD slice 1-100 (positions 0-419, XOR 01/10/80/FF): every flip of
#: bytes 43-44 makes imagecodecs' liblj92 segfault; libjpeg-turbo and libjpeg refuse the stream.
CRASH_OFFSET = 43


#: Offset and XOR mask, inside the JPEG Lossless codestream of RICORD slice 1-102, of the byte
#: changed by the lenient-decode input (0x84 -> 0x71; found by /tmp/breaker's 3-byte mutation
#: fuzzer, reduced to the one byte that matters): pylibjpeg-libjpeg refuses the stream ("invalid
#: huffman code"); libjpeg-turbo (imagecodecs) decodes it without an error into pixels up to
#: 23,676 off.
LENIENT_OFFSET, LENIENT_MASK = 104872, 0x84 ^ 0x71


def copy_slices(src: Path, dst: Path, start: int, stop: int) -> list[Path]:
    """Copy the sorted ``*.dcm`` files ``[start:stop]`` of ``src`` into ``dst``."""
    dst.mkdir(parents=True, exist_ok=True)
    out = []
    for f in sorted(src.glob("*.dcm"))[start:stop]:
        shutil.copy2(f, dst / f.name)
        out.append(dst / f.name)
    return out


def frame_offset(path: Path) -> int:
    """Byte offset in ``path`` of its (single) encapsulated pixel data frame."""
    data = path.read_bytes()
    ds = pydicom.dcmread(path)
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    offset = data.find(frame[:256])
    assert offset > 0, path
    return offset


def flip_codestream_byte(path: Path, offset: int = CRASH_OFFSET, mask: int = 0xFF) -> None:
    """XOR one byte of the JPEG codestream of ``path`` in place (file layout unchanged)."""
    data = bytearray(path.read_bytes())
    data[frame_offset(path) + offset] ^= mask
    path.write_bytes(bytes(data))


def ricord_crash_series(shared_ct: Path, dst: Path, n: int = 6) -> Path:
    """``n`` RICORD slices (from 1-100 on), the first with the liblj92-crashing byte flip.

    Returns the damaged file.
    """
    files = copy_slices(shared_ct / RICORD, dst, 99, 99 + n)
    flip_codestream_byte(files[0])
    return files[0]


def mutate_bytes(data: bytes, rng: random.Random, protect: int = 0) -> bytes:
    """One random mutation of ``data`` (AFL-like): flip bits, set bytes, splice, cut or repeat.

    Parameters
    ----------
    data : bytes
        Original file.
    rng : random.Random
        Seeded generator (the mutation is a function of its state).
    protect : int
        Bytes at the start left alone (e.g. 132 keeps the preamble and DICM marker).
    """
    buf = bytearray(data)
    kind = rng.choice(["bits", "bytes", "interesting", "cut", "splice", "repeat"])
    lo = protect
    if kind == "bits":
        for _ in range(rng.randint(1, 8)):
            p = rng.randrange(lo, len(buf))
            buf[p] ^= 1 << rng.randrange(8)
    elif kind == "bytes":
        for _ in range(rng.randint(1, 4)):
            buf[rng.randrange(lo, len(buf))] = rng.randrange(256)
    elif kind == "interesting":  # lengths and counts: 0, -1, huge, off by one
        p = rng.randrange(lo, len(buf) - 4)
        value = rng.choice([b"\x00\x00\x00\x00", b"\xff\xff\xff\xff", b"\xff\xff\xff\x7f",
                            b"\x00\x00\x01\x00", b"\x01\x00\x00\x00", b"\xfe\xff"])
        buf[p:p + len(value)] = value
    elif kind == "cut":
        buf = buf[: rng.randrange(lo, len(buf))]
    elif kind == "splice":  # copy a chunk of the file over another place
        a, b = rng.randrange(lo, len(buf)), rng.randrange(lo, len(buf))
        n = rng.randint(1, 64)
        buf[b:b + n] = buf[a:a + n]
    else:  # repeat a chunk (grows the file)
        a = rng.randrange(lo, len(buf))
        n = rng.randint(1, 256)
        buf[a:a] = buf[a:a + n] * rng.randint(1, 4)
    return bytes(buf)


def set_header(path: Path, **values: object) -> None:
    """Rewrite ``path`` with the given header keywords set (raw strings go in as written).

    Values are written without validation, as a broken scanner or a hostile file would.
    """
    from pydicom import config

    ds = pydicom.dcmread(path)
    old = config.settings.writing_validation_mode
    config.settings.writing_validation_mode = config.IGNORE
    try:
        for keyword, value in values.items():
            if value is None:
                delattr(ds, keyword)
            else:
                setattr(ds, keyword, value)
        ds.save_as(path)
    finally:
        config.settings.writing_validation_mode = old


def sorted_slices(folder: Path) -> list[Path]:
    """The ``*.dcm`` files of ``folder`` in file-name order (the sample's order along z)."""
    return sorted(folder.glob("*.dcm"))


def position_outlier(folder: Path, index: int = -1, offset_mm: float = 20_000.0) -> Path:
    """Move one slice's ImagePositionPatient ``offset_mm`` along z (issue 19: 20 m off)."""
    victim = sorted_slices(folder)[index]
    ds = pydicom.dcmread(victim, stop_before_pixels=True)
    x, y, z = (float(v) for v in ds.ImagePositionPatient)
    set_header(victim, ImagePositionPatient=[f"{x:g}", f"{y:g}", f"{z + offset_mm:g}"])
    return victim


def patch_explicit_ds(path: Path, tag: int, text: str) -> None:
    """Replace the value of DS element ``tag`` in an Explicit VR Little Endian file byte-wise.

    For values pydicom refuses to write (``"abc"``): the bytes a broken writer would leave.
    """
    import struct

    data = path.read_bytes()
    head = struct.pack("<HH", tag >> 16, tag & 0xFFFF) + b"DS"
    at = data.index(head, 132)
    (length,) = struct.unpack("<H", data[at + 6:at + 8])
    value = text.encode() + (b" " if len(text) % 2 else b"")
    new = head + struct.pack("<H", len(value)) + value
    path.write_bytes(data[:at] + new + data[at + 8 + length:])


def rescale_slope(folder: Path, value: str, index: int = 7) -> Path:
    """Set one slice's RescaleSlope to the raw string ``value`` (``"nan"``, ``"abc"``...)."""
    victim = sorted_slices(folder)[index]
    patch_explicit_ds(victim, 0x00281053, value)
    return victim


def rescale_intercept(folder: Path, value: str, index: int = 7) -> Path:
    """Set one slice's RescaleIntercept to the raw string ``value``."""
    victim = sorted_slices(folder)[index]
    patch_explicit_ds(victim, 0x00281052, value)
    return victim


def pixel_spacing(folder: Path, value: list[str]) -> None:
    """Set PixelSpacing of every slice (one geometry) to ``value``."""
    for f in sorted_slices(folder):
        set_header(f, PixelSpacing=value)


def orientation(folder: Path, value: list[str]) -> None:
    """Set ImageOrientationPatient of every slice to ``value``."""
    for f in sorted_slices(folder):
        set_header(f, ImageOrientationPatient=value)


def far_position(folder: Path, index: int = 3) -> Path:
    """One slice 1e9 mm from the origin in x (overflow-sized coordinates)."""
    victim = sorted_slices(folder)[index]
    ds = pydicom.dcmread(victim, stop_before_pixels=True)
    _, y, z = (float(v) for v in ds.ImagePositionPatient)
    set_header(victim, ImagePositionPatient=["1e9", f"{y:g}", f"{z:g}"])
    return victim


def keep_ends(folder: Path, n_each: int) -> None:
    """Delete all but the first and last ``n_each`` slices (one very large gap)."""
    files = sorted_slices(folder)
    for f in files[n_each:-n_each]:
        f.unlink()


def ricord_lenient_series(shared_ct: Path, dst: Path) -> Path:
    """RICORD slices 1-101..1-103 with the lenient-decode byte changed in 1-102.

    Returns the damaged file.
    """
    files = copy_slices(shared_ct / RICORD, dst, 100, 103)
    flip_codestream_byte(files[1], LENIENT_OFFSET, LENIENT_MASK)
    return files[1]


def inplane_shift(folder: Path, index: int = 12, dx_mm: float = 40.0, dy_mm: float = 0.0) -> Path:
    """Move one slice's ImagePositionPatient sideways (x/y, in the image plane of an axial
    series): the breaker's one_shift40 (+40 mm) and slice20m_x (+20 m)."""
    victim = sorted_slices(folder)[index]
    ds = pydicom.dcmread(victim, stop_before_pixels=True)
    x, y, z = (float(v) for v in ds.ImagePositionPatient)
    set_header(victim, ImagePositionPatient=[f"{x + dx_mm:g}", f"{y + dy_mm:g}", f"{z:g}"])
    return victim


def same_position(folder: Path) -> None:
    """Every slice at the first slice's ImagePositionPatient (30 instances, one position)."""
    files = sorted_slices(folder)
    ipp = pydicom.dcmread(files[0], stop_before_pixels=True).ImagePositionPatient
    for f in files[1:]:
        set_header(f, ImagePositionPatient=[f"{float(v):g}" for v in ipp])
