"""Real-radiograph test inputs for medscan.xray: one small generator per container (issue 16).

From a real radiograph: a display-ready 8-bit picture, and writers for 8/16-bit PNG, 12-bit in
16-bit PNG with/without sBIT, DICOM DX MONOCHROME1/2 with/without VOI window or VOI LUT, and a
20000 x 20000 PNG (Pillow's decompression-bomb case, issue 19 fault 4).
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, PngImagePlugin

from medscan.xray import data as xd


# ----------------------------------------------------------------------------------- pictures
def display_picture(path: Path) -> np.ndarray:
    """A real radiograph as a display-ready 8-bit picture that uses its whole range."""
    with Image.open(path) as img:
        grey = np.asarray(img.convert("L"), dtype=np.float64)
    lo, hi = np.percentile(grey, xd.PERCENTILE_WINDOW)
    return np.round(np.clip((grey - lo) / (hi - lo), 0, 1) * 255).astype(np.uint8)


def to_12bit(v: np.ndarray) -> np.ndarray:
    """The same picture as 12-bit values 0..4095."""
    return np.round(v.astype(np.float64) * 4095 / 255).astype(np.uint16)


# ----------------------------------------------------------------------------------- generators
def write_png8(path: Path, v: np.ndarray) -> None:
    Image.fromarray(v).save(path)


def write_png16(path: Path, v: np.ndarray) -> None:
    """16-bit PNG scaled to the full range as the PNG spec says (v * 257), no sBIT."""
    Image.fromarray(v.astype(np.uint16) * 257).save(path)


def write_png12_in_16(path: Path, v: np.ndarray, sbit: bool) -> None:
    """12-bit values stored unshifted in a 16-bit PNG, with or without an sBIT chunk."""
    info = PngImagePlugin.PngInfo()
    if sbit:
        info.add(b"sBIT", bytes([12]))
    Image.fromarray(to_12bit(v)).save(path, pnginfo=info)


def write_dicom(path: Path, stored: np.ndarray, photometric: str, voi: str | None) -> None:
    """A DX DICOM of 12-bit ``stored`` values; ``voi`` None, ``"window"`` or ``"lut"``."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # DX for presentation
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleSlope, ds.RescaleIntercept = 1, 0
    if voi == "window":  # covers the 12-bit range
        ds.WindowCenter, ds.WindowWidth = 2048, 4096
    elif voi == "lut":  # linear 12-bit -> 16-bit VOI LUT
        item = Dataset()
        item.LUTDescriptor = [4096, 0, 16]
        item.add_new(0x00283006, "US", [min(65535, i * 16) for i in range(4096)])  # LUTData
        ds.VOILUTSequence = Sequence([item])
    ds.PixelData = stored.astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)


def write_all(folder: Path, v: np.ndarray) -> dict[str, Path]:
    """Every container of one picture; name -> file (the DICOMs have no suffix)."""
    twelve = to_12bit(v)
    files = {name: folder / name for name in (
        "png8.png", "png16.png", "png12.png", "png12_sbit.png", "mono2", "mono2_window",
        "mono2_voilut", "mono1", "mono1_window", "mono1_voilut")}
    write_png8(files["png8.png"], v)
    write_png16(files["png16.png"], v)
    write_png12_in_16(files["png12.png"], v, sbit=False)
    write_png12_in_16(files["png12_sbit.png"], v, sbit=True)
    for voi, suffix in ((None, ""), ("window", "_window"), ("lut", "_voilut")):
        write_dicom(files[f"mono2{suffix}"], twelve, "MONOCHROME2", voi)
        write_dicom(files[f"mono1{suffix}"], 4095 - twelve, "MONOCHROME1", voi)
    return files


# ----------------------------------------------------------------------------------- bombs
def write_png_bomb(path: Path, side: int = 20000) -> None:
    """A valid all-black grey PNG of ``side`` x ``side`` pixels (a few hundred KB on disk)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(
            ">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    comp = zlib.compressobj(9)
    row = b"\0" * (side + 1)  # filter byte + pixels
    body = b"".join(comp.compress(row * 500) for _ in range(side // 500)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", body)
                     + chunk(b"IEND", b""))
