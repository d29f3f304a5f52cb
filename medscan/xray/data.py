"""Chest X-ray data: folder layouts, image decoding to one mode, patient ids, splits, leakage guard.

Every image, whatever its file format or mode (8-bit grey, RGB, RGBA, 16-bit PNG, DICOM DX/CR
with MONOCHROME1/2), becomes a ``float32`` grey array in ``[0, 1]`` of shape ``(H, W)`` by one
intensity policy (:func:`to_unit_range`), and is then resized to ``(size, size)`` by
:func:`preprocess`, the single function used in training, evaluation, prediction and Grad-CAM.
So the original image size never reaches the model.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
import struct
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

#: Class names in label order (label 1 = PNEUMONIA is the positive class).
CLASSES: tuple[str, ...] = ("NORMAL", "PNEUMONIA")
#: File suffixes taken as images (lower case). Files with another suffix (or none) are images
#: when their content is (:func:`sniff_format`); all others are reported as ignored.
IMAGE_SUFFIXES = frozenset({".jpeg", ".jpg", ".png", ".dcm", ".dicom"})
DICOM_SUFFIXES = frozenset({".dcm", ".dicom"})
#: Percentiles of the window used when an image's significant range is unknown (16-bit PNG
#: without sBIT, DICOM without VOI LUT/window, float data). Narrow tails (0.01%) so that a
#: display-ready picture that uses its whole range comes out as it would from an 8-bit file.
PERCENTILE_WINDOW = (0.01, 99.99)
#: An image whose values span less than this fraction of their nominal range gets a warning
#: (e.g. 12-bit data in a 16-bit PNG without sBIT: 6%).
LOW_RANGE_FRACTION = 0.25
#: Kermany names: ``person1_bacteria_1`` -> ``person1``; ``IM-0011-0001-0002`` -> ``IM-0011``;
#: ``NORMAL2-IM-0587-0001`` -> ``NORMAL2-IM-0587``.
KERMANY_PATIENT_REGEX = r"^(person\d+)_|^((?:NORMAL2-)?IM-\d+)"
#: The embedded 16-image sample (``ROOT/<CLASS>/*``).
SAMPLE_ROOT = Path(__file__).resolve().parents[1] / "sample" / "xray"


class ImageReadError(ValueError):
    """An image file cannot be decoded; the message names the file and the reason."""

    def __init__(self, path: str | Path, reason: str | None = None) -> None:
        # one-argument form: torch's DataLoader re-raises worker errors as ``cls(message)``
        self.path = str(path)
        self.reason = reason or ""
        super().__init__(f"{path}: {reason}" if reason is not None else str(path))


class DatasetError(ValueError):
    """The folder layout is wrong (missing/empty/unknown class folder, no images)."""


@dataclass(frozen=True)
class ImageRecord:
    """One image of a data set.

    Attributes
    ----------
    path : Path
        The file.
    label : int or None
        Index into the class names (``None`` when unknown, e.g. for prediction).
    patient_id : str
        Patient id parsed from the file name (falls back to the file stem).
    """

    path: Path
    label: int | None
    patient_id: str


# ----------------------------------------------------------------------------------- patient ids
def patient_id(name: str, regex: str | None = None) -> str:
    """Patient id from a file name.

    Parameters
    ----------
    name : str
        File name (with or without folders; only the last part is used).
    regex : str, optional
        A regular expression; the first non-empty capture group (or the whole match when it has
        no groups) is the id. Default: :data:`KERMANY_PATIENT_REGEX`.

    Returns
    -------
    str
        The patient id, or the file stem when the pattern does not match.
    """
    stem = Path(name).name
    stem = stem[: -len(Path(stem).suffix)] if Path(stem).suffix else stem
    match = re.search(regex or KERMANY_PATIENT_REGEX, stem)
    if match is None:
        return stem
    groups = [g for g in match.groups() if g]
    return groups[0] if groups else match.group(0)


# ----------------------------------------------------------------------------------- layouts
def class_root(root: str | Path, split: str | None = None) -> Path:
    """The folder that holds the class folders: ``ROOT/<split>`` if it exists, else ``ROOT``.

    Raises
    ------
    DatasetError
        When ``root`` (or a requested split that is not there while ``ROOT`` holds other
        splits) does not exist.
    """
    root = Path(root)
    if not root.exists():
        raise DatasetError(f"{root}: data root does not exist")
    if split and (root / split).is_dir():
        return root / split
    if split and not any((root / c).is_dir() for c in CLASSES):
        raise DatasetError(
            f"{root}: no split folder {split!r} and no class folders "
            f"({', '.join(CLASSES)}) directly under the root"
        )
    return root


def scan_folder(
    root: str | Path,
    split: str | None = None,
    *,
    classes: Sequence[str] = CLASSES,
    patient_regex: str | None = None,
) -> list[ImageRecord]:
    """List the labelled images of ``ROOT/<split>/<CLASS>/*`` or ``ROOT/<CLASS>/*``.

    Parameters
    ----------
    root : path
        Data root.
    split : str, optional
        Split sub-folder (``train``, ``val``, ``test``); used when ``ROOT/<split>`` exists.
    classes : sequence of str
        Known class names, label order.
    patient_regex : str, optional
        See :func:`patient_id`.

    Returns
    -------
    list of ImageRecord
        Sorted by (label, file name).

    Raises
    ------
    DatasetError
        A sub-folder whose name is not a known class, a class folder without images, or no
        class folder at all. The message names the folder.
    """
    base = class_root(root, split)
    subdirs = sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))
    unknown = [p for p in subdirs if p.name not in classes]
    if unknown:
        raise DatasetError(
            f"{unknown[0]}: unknown class folder {unknown[0].name!r}; the model knows "
            f"{list(classes)}"
        )
    if not subdirs:
        raise DatasetError(f"{base}: no class folders ({', '.join(classes)}) found")
    records: list[ImageRecord] = []
    for folder in subdirs:
        found = find_images([folder])
        for path, reason in found.ignored:
            log.warning("%s: ignored (%s)", path, reason)
        if found.unreadable:
            path, reason = found.unreadable[0]
            raise DatasetError(f"{path}: {reason}")
        files = found.images
        if not files:
            raise DatasetError(
                f"{folder}: empty class folder (no {'/'.join(sorted(IMAGE_SUFFIXES))} files)"
            )
        label = list(classes).index(folder.name)
        records += [ImageRecord(p, label, patient_id(p.name, patient_regex)) for p in files]
    return records


def sniff_format(path: str | Path) -> str | None:
    """The image container of a file by its content: ``dicom``, ``jpeg``, ``png`` or ``None``.

    DICOM Part 10 files carry ``DICM`` at byte 128 (PS3.10 7.1); JPEG starts with the SOI
    marker ``FF D8 FF``; PNG with its 8-byte signature.

    Raises
    ------
    OSError
        When the file cannot be read.
    """
    with open(path, "rb") as fh:
        head = fh.read(132)
    if head[128:132] == b"DICM":
        return "dicom"
    if head[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if head[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    return None


@dataclass
class ImageSearch:
    """What :func:`find_images` found under its inputs.

    Attributes
    ----------
    images : list of Path
        Image files (by suffix or by content), sorted per input.
    ignored : list of (Path, str)
        Files that are not images, with the reason.
    unreadable : list of (Path, str)
        Files or folders that could not be read (these may hold images: callers report them
        as failed items).
    """

    images: list[Path] = field(default_factory=list)
    ignored: list[tuple[Path, str]] = field(default_factory=list)
    unreadable: list[tuple[Path, str]] = field(default_factory=list)


def _classify(path: Path, out: ImageSearch) -> None:
    if path.suffix.lower() in IMAGE_SUFFIXES:
        out.images.append(path)
        return
    try:
        kind = sniff_format(path)
    except OSError as exc:
        out.unreadable.append((path, f"cannot open ({exc.strerror or exc})"))
        return
    if kind is None:
        suffix = path.suffix or "no suffix"
        out.ignored.append((path, f"not a JPEG, PNG or DICOM file ({suffix}, content not one)"))
    else:
        out.images.append(path)


def find_images(inputs: Sequence[str | Path]) -> ImageSearch:
    """Expand files and folders (recursively, symlinked folders not followed) to image files.

    A file is an image when its suffix is one of :data:`IMAGE_SUFFIXES` or its content is
    JPEG, PNG or DICOM (:func:`sniff_format`), so DICOM files without a suffix are found.
    Everything else is listed in ``ignored`` with a reason; folders or files that cannot be
    read are listed in ``unreadable``. A file given explicitly is always taken as an image.

    Raises
    ------
    DatasetError
        When an input does not exist.
    """
    out = ImageSearch()
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            errors: list[OSError] = []
            found = ImageSearch()
            for folder, dirs, files in os.walk(path, onerror=errors.append):
                dirs.sort()
                found.ignored += [
                    (Path(folder) / d, "symbolic link to a folder, not followed")
                    for d in dirs if (Path(folder) / d).is_symlink()
                ]
                for name in sorted(files):
                    _classify(Path(folder) / name, found)
            found.images.sort()
            out.images += found.images
            out.ignored += found.ignored
            out.unreadable += found.unreadable
            out.unreadable += [
                (Path(e.filename or path), f"cannot read folder ({e.strerror or e})")
                for e in errors
            ]
        elif path.is_file():
            out.images.append(path)
        else:
            raise DatasetError(f"{path}: no such file or folder")
    return out


def list_images(inputs: Sequence[str | Path]) -> list[Path]:
    """Expand files and folders (recursively) to a sorted list of image files.

    Like :func:`find_images`, logging every ignored file and refusing unreadable ones.

    Raises
    ------
    DatasetError
        When an input does not exist, a file or folder cannot be read, or nothing was found.
    """
    found = find_images(inputs)
    for path, reason in found.ignored:
        log.warning("%s: ignored (%s)", path, reason)
    if found.unreadable:
        path, reason = found.unreadable[0]
        raise DatasetError(f"{path}: {reason}")
    if not found.images:
        raise DatasetError(f"no images found in {[str(i) for i in inputs]}")
    return found.images


def class_counts(records: Sequence[ImageRecord], classes: Sequence[str] = CLASSES) -> dict:
    """``{class name: number of images}`` (in class order)."""
    counts = Counter(r.label for r in records)
    return {name: counts.get(i, 0) for i, name in enumerate(classes)}


# ----------------------------------------------------------------------------------- decoding
def max_image_pixels() -> int:
    """Largest image (pixels, all frames) medscan decodes: Pillow's decompression-bomb limit.

    Pillow raises ``DecompressionBombError`` above ``2 * Image.MAX_IMAGE_PIXELS`` (178,956,970
    by default); medscan applies the same limit to every container, DICOM included, so a
    20000 x 20000 image is one failed item rather than a crash or a 1.6 GB float array.
    """
    from PIL import Image

    limit = Image.MAX_IMAGE_PIXELS
    return 2 * int(limit) if limit else 2**62


def png_sbit(path: str | Path) -> int | None:
    """Significant bits of a PNG's grey/colour samples from its ``sBIT`` chunk, or ``None``.

    Pillow does not expose ``sBIT`` (PNG spec 11.3.3.4), so the chunks before the first
    ``IDAT`` are walked here; for colour types the largest channel value is returned.
    """
    try:
        with open(path, "rb") as fh:
            if fh.read(8) != b"\x89PNG\r\n\x1a\n":
                return None
            while True:
                head = fh.read(8)
                if len(head) < 8:
                    return None
                length, kind = struct.unpack(">I4s", head)
                if kind == b"sBIT":
                    data = fh.read(length)
                    return max(data) if data else None
                if kind in (b"IDAT", b"IEND") or length > 1 << 24:
                    return None
                fh.seek(length + 4, io.SEEK_CUR)  # data + CRC
    except OSError:
        return None


@dataclass(frozen=True)
class IntensityWindow:
    """How raw values were mapped to [0, 1] (see :func:`to_unit_range`).

    Attributes
    ----------
    low, high : float
        Raw values mapped to 0 and 1.
    source : str
        ``"8-bit"``, ``"sBIT <n>"``, ``"VOI window"``, ``"VOI LUT"`` or ``"percentile window"``.
    used_fraction : float
        Share of the nominal range (container or bit depth) that the image's values span.
    """

    low: float
    high: float
    source: str
    used_fraction: float


def to_unit_range(
    values: np.ndarray,
    *,
    nominal_bits: int | None,
    known_range: tuple[float, float] | None = None,
    source: str = "",
) -> tuple[np.ndarray, IntensityWindow]:
    """The one intensity policy of every container: raw values -> float32 in [0, 1].

    * When the range of meaningful values is known (``known_range``: an 8-bit container, a PNG
      ``sBIT``, the output range of a DICOM VOI LUT or window), that range maps to [0, 1].
    * Otherwise (16-bit PNG without ``sBIT``, DICOM without VOI LUT/window, float data), a
      percentile window (:data:`PERCENTILE_WINDOW`) of the image's own values maps to [0, 1],
      as DICOM viewers window an image without VOI attributes by its value range.

    So the same picture gives the same input from any container (within quantisation), and
    12-bit data in a 16-bit PNG is no longer divided by 65535 into a near-black image.

    Parameters
    ----------
    values : ndarray, (H, W)
        Raw grey values (any real dtype).
    nominal_bits : int, optional
        Bit depth of the container or the data (for the ``used_fraction`` report).
    known_range : (float, float), optional
        Values mapped to 0 and 1 when known.
    source : str
        Name of ``known_range``'s origin (for messages).

    Returns
    -------
    image : ndarray, float32, (H, W), clipped to [0, 1]
    window : IntensityWindow
    """
    arr = np.asarray(values, dtype=np.float64)
    # for the report only, a strided sample of a large image is enough (and 10x cheaper)
    step = int(np.sqrt(arr.size / (1 << 18))) if known_range is not None else 1
    sample = arr[:: max(1, step), :: max(1, step)] if arr.ndim == 2 else arr
    p_lo, p_hi = (float(v) for v in np.percentile(sample, PERCENTILE_WINDOW))
    if known_range is not None:
        low, high = float(known_range[0]), float(known_range[1])
    else:
        low, high, source = p_lo, p_hi, "percentile window"
    span = float(2**nominal_bits - 1) if nominal_bits else (high - low)
    used = (p_hi - p_lo) / span if span > 0 else 0.0
    if high > low:
        out = np.clip((arr - low) / (high - low), 0.0, 1.0).astype(np.float32)
    else:
        out = np.zeros(arr.shape, dtype=np.float32)
    return out, IntensityWindow(low, high, source, float(used))


def _warn_range(path: Path, window: IntensityWindow, bits: int | None) -> None:
    if window.used_fraction < LOW_RANGE_FRACTION:
        depth = f"{bits}-bit " if bits else ""
        log.warning(
            "%s: the image uses %.1f%% of its %srange (%s applied: %.6g..%.6g -> 0..1); "
            "check that this is the intended picture",
            path.name, 100 * window.used_fraction, depth, window.source, window.low,
            window.high,
        )


def _pil_to_grey(img, path: Path, sbit: int | None = None) -> np.ndarray:
    """Any Pillow image -> float32 grey in [0, 1] by :func:`to_unit_range`."""
    from PIL import Image

    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        raw = np.asarray(img, dtype=np.int64) if mode == "I" else np.asarray(img, np.uint16)
        bits = 16 if mode != "I" or int(raw.max(initial=0)) <= 65535 else 32
        known = None
        if sbit and sbit < bits and int(raw.max(initial=0)) < 2**sbit:
            # sBIT stored unshifted (common in exports): its own range is the data's range.
            # When values exceed 2**sbit, they were scaled to the full range as the PNG spec
            # says, and the window is unknown as without sBIT.
            known = (0.0, float(2**sbit - 1))
        elif sbit and sbit >= bits:
            known = (0.0, float(2**bits - 1))
        arr, window = to_unit_range(raw, nominal_bits=sbit or bits, known_range=known,
                                    source=f"sBIT {sbit}")
        _warn_range(path, window, sbit or bits)
    elif mode == "F":
        arr, window = to_unit_range(np.asarray(img, dtype=np.float32), nominal_bits=None)
    else:
        if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
            # composite onto black: transparent pixels carry no radiograph
            rgba = img.convert("RGBA")
            black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
            img = Image.alpha_composite(black, rgba)
        raw = np.asarray(img.convert("L"), dtype=np.uint8)
        bits = sbit if sbit and sbit < 8 and int(raw.max(initial=0)) < 2**sbit else 8
        arr, window = to_unit_range(raw, nominal_bits=bits, known_range=(0.0, 2.0**bits - 1),
                                    source="8-bit" if bits == 8 else f"sBIT {bits}")
        _warn_range(path, window, bits)
    if arr.ndim != 2 or arr.size == 0:
        raise ImageReadError(path, f"unexpected decoded shape {arr.shape} (mode {mode})")
    return arr


def _voi_output_range(ds) -> tuple[float, float] | None:
    """The value range that pydicom's ``apply_voi_lut`` produces for this data set.

    Windowing maps onto the stored-bits range after the modality rescale
    (``pydicom.pixels.processing.apply_windowing``); a VOI LUT onto ``[0, 2**bits - 1]`` with
    ``bits`` the LUT Descriptor's third value (PS3.3 C.11.2.1.1).
    """
    if "VOILUTSequence" in ds and len(ds.VOILUTSequence):
        bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])
        return 0.0, float(2**bits - 1)
    if "WindowCenter" in ds and "WindowWidth" in ds:
        bits = int(ds.BitsStored)
        if ds.get("ModalityLUTSequence"):
            bits = int(ds.ModalityLUTSequence[0].LUTDescriptor[2])
            lo, hi = 0.0, float(2**bits - 1)
        elif int(ds.get("PixelRepresentation", 0)) == 0:
            lo, hi = 0.0, float(2**bits - 1)
        else:
            lo, hi = float(-(2 ** (bits - 1))), float(2 ** (bits - 1) - 1)
        slope = ds.get("RescaleSlope")
        if slope is not None and not ds.get("ModalityLUTSequence"):
            inter = float(ds.get("RescaleIntercept", 0.0))
            lo, hi = lo * float(slope) + inter, hi * float(slope) + inter
        return min(lo, hi), max(lo, hi)
    return None


def _read_dicom(path: Path) -> np.ndarray:
    import pydicom
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    try:
        ds = pydicom.dcmread(path)
    except Exception as exc:
        raise ImageReadError(path, f"not a readable DICOM file ({exc})") from exc
    modality = str(ds.get("Modality", ""))
    if modality not in ("DX", "CR", "DR", "RG", "PX", ""):
        raise ImageReadError(path, f"DICOM modality {modality!r} is not a radiograph (DX/CR)")
    if "Rows" not in ds or "Columns" not in ds:
        raise ImageReadError(path, "DICOM file without an image (no Rows/Columns)")
    n_pixels = int(ds.Rows) * int(ds.Columns) * int(ds.get("NumberOfFrames", 1) or 1)
    if n_pixels > max_image_pixels():
        raise ImageReadError(
            path, f"image of {ds.Columns} x {ds.Rows} pixels exceeds the limit of "
            f"{max_image_pixels():,} pixels (decompression-bomb guard)"
        )
    try:
        pixels = ds.pixel_array
    except Exception as exc:
        raise ImageReadError(path, f"cannot decode DICOM pixel data ({exc})") from exc
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    bits = int(ds.get("BitsStored", 16) or 16)
    if pixels.ndim == 3 and photometric in ("RGB", "YBR_FULL", "YBR_FULL_422"):
        arr, window = to_unit_range(pixels.astype(np.float32).mean(axis=-1),
                                    nominal_bits=int(ds.get("BitsAllocated", 8)),
                                    known_range=(0.0, 2.0 ** int(ds.get("BitsStored", 8)) - 1),
                                    source="RGB")
    elif pixels.ndim == 2:
        values = apply_modality_lut(pixels, ds).astype(np.float64)
        known = None
        source = ""
        if "VOILUTSequence" in ds or ("WindowCenter" in ds and "WindowWidth" in ds):
            known = _voi_output_range(ds)
            source = "VOI LUT" if "VOILUTSequence" in ds else "VOI window"
            values = apply_voi_lut(values, ds, prefer_lut=True).astype(np.float64)
        arr, window = to_unit_range(values, nominal_bits=bits if known is None else None,
                                    known_range=known, source=source)
    else:
        raise ImageReadError(path, f"DICOM pixel array of shape {pixels.shape} is not one image")
    _warn_range(path, window, bits)
    if photometric == "MONOCHROME1":  # high values are dark: invert to the usual look
        arr = 1.0 - arr
    return arr.astype(np.float32)


def read_image(path: str | Path, *, draft_size: int | None = None) -> np.ndarray:
    """Decode an image file to a grey ``float32`` array in ``[0, 1]``, shape ``(H, W)``.

    Parameters
    ----------
    path : path
        JPEG, PNG (8/16-bit, grey/RGB/RGBA/palette) or DICOM DX/CR, recognised by content
        (any suffix). RGB becomes grey by ITU-R 601 luma; alpha is composited onto black.
        Intensities follow one policy for every container (:func:`to_unit_range`): 8-bit or
        PNG ``sBIT`` range, DICOM modality LUT + VOI LUT/window, otherwise a percentile
        window; MONOCHROME1 is inverted. An image that uses less than
        :data:`LOW_RANGE_FRACTION` of its range is logged as a warning.
    draft_size : int, optional
        For JPEG only: let libjpeg decode at a reduced DCT scale that is still at least this
        many pixels on each side (much faster for large originals). ``None`` decodes fully.

    Raises
    ------
    ImageReadError
        When the file cannot be decoded or is larger than :func:`max_image_pixels`; the
        message names the file and the reason.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        kind = sniff_format(path)
    except OSError as exc:
        raise ImageReadError(path, f"cannot open ({exc.strerror or exc})") from exc
    if kind == "dicom" or (kind is None and path.suffix.lower() in DICOM_SUFFIXES):
        return _read_dicom(path)
    try:
        with Image.open(path) as img:
            if draft_size and img.format == "JPEG":
                img.draft(img.mode if img.mode in ("L", "RGB") else None, (draft_size, draft_size))
            img.load()
            return _pil_to_grey(img, path, png_sbit(path) if img.format == "PNG" else None)
    except Image.DecompressionBombError as exc:
        raise ImageReadError(path, f"{exc} (decompression-bomb guard)") from exc
    except UnidentifiedImageError as exc:
        raise ImageReadError(path, "not an image Pillow can identify (JPEG/PNG/DICOM)") from exc
    except MemoryError as exc:
        raise ImageReadError(path, "not enough memory to decode") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        if isinstance(exc, ImageReadError):
            raise
        raise ImageReadError(path, f"cannot decode ({exc})") from exc


def probe_image(path: str | Path) -> None:
    """Check that a file's header is a readable image (fast; pixel data are not decoded).

    Raises
    ------
    ImageReadError
        Naming the file and the reason (also for images over :func:`max_image_pixels`).
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        kind = sniff_format(path)
    except OSError as exc:
        raise ImageReadError(path, f"cannot open ({exc.strerror or exc})") from exc
    if kind == "dicom" or (kind is None and path.suffix.lower() in DICOM_SUFFIXES):
        import pydicom

        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception as exc:
            raise ImageReadError(path, f"not a readable DICOM file ({exc})") from exc
        if "Rows" not in ds:
            raise ImageReadError(path, "DICOM file without an image")
        return
    try:
        with Image.open(path) as img:
            img.size  # noqa: B018 - header parsed by open()
    except Image.DecompressionBombError as exc:
        raise ImageReadError(path, f"{exc} (decompression-bomb guard)") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ImageReadError(path, "not an image Pillow can identify (JPEG/PNG/DICOM)") from exc


def preprocess(image: np.ndarray, size: int, resize: str = "squash") -> np.ndarray:
    """Resize a grey ``[0, 1]`` image to ``(size, size)``: the one resize of training and inference.

    Parameters
    ----------
    image : ndarray, float32, (H, W)
        Output of :func:`read_image`.
    size : int
        Side in pixels.
    resize : {"squash", "pad"}
        ``squash`` resizes the whole image to a square (aspect ratio not kept; what the
        ``xray-224`` copies did); ``pad`` keeps the aspect ratio and pads the short side with
        black (letterbox). Both use Pillow's bicubic filter with antialiasing on float data.

    Returns
    -------
    ndarray, float32, (size, size)
    """
    from PIL import Image

    img = Image.fromarray(np.ascontiguousarray(image, dtype=np.float32), mode="F")
    if resize == "squash":
        out = img.resize((size, size), Image.Resampling.BICUBIC)
        arr = np.asarray(out, dtype=np.float32)
    elif resize == "pad":
        h, w = image.shape
        y0, x0, nh, nw = letterbox_box(h, w, size)
        small = np.asarray(img.resize((nw, nh), Image.Resampling.BICUBIC), dtype=np.float32)
        arr = np.zeros((size, size), dtype=np.float32)
        arr[y0 : y0 + nh, x0 : x0 + nw] = small
    else:
        raise ValueError(f"resize must be 'squash' or 'pad', not {resize!r}")
    return np.clip(arr, 0.0, 1.0)


def letterbox_box(h: int, w: int, size: int) -> tuple[int, int, int, int]:
    """Where ``resize="pad"`` puts an ``(h, w)`` image in the ``(size, size)`` input.

    Returns
    -------
    y0, x0, nh, nw : int
        Top-left corner and size (pixels) of the resized image inside the square.
    """
    scale = size / max(h, w)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    return (size - nh) // 2, (size - nw) // 2, nh, nw


def reencode_jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    """Round-trip a grey ``[0, 1]`` image through 8-bit JPEG at ``quality`` (Pillow/libjpeg).

    The ``xray-224`` training copies were saved by Pillow as JPEG quality 75 after the
    resize (``xray-224/PROVENANCE.md``); doing the same to an inference input gives it the
    same compression artefacts as the training images.
    """
    from PIL import Image

    grey = Image.fromarray(np.round(np.clip(image, 0, 1) * 255).astype(np.uint8), mode="L")
    buf = io.BytesIO()
    grey.save(buf, format="JPEG", quality=int(quality))
    buf.seek(0)
    with Image.open(buf) as img:
        return np.asarray(img.convert("L"), dtype=np.float32) / 255.0


def clahe(image: np.ndarray, clip_limit: float = 0.01) -> np.ndarray:
    """Contrast-limited adaptive histogram equalisation (scikit-image) of a ``[0, 1]`` image."""
    from skimage.exposure import equalize_adapthist

    return equalize_adapthist(np.clip(image, 0, 1), clip_limit=clip_limit).astype(np.float32)


def load_image(
    path: str | Path,
    size: int,
    resize: str = "squash",
    jpeg_draft: bool = True,
    *,
    reencode_jpeg: int | None = None,
    clahe: bool = False,
) -> np.ndarray:
    """:func:`read_image` then :func:`preprocess`: a ``(size, size)`` float32 array in [0, 1].

    Parameters
    ----------
    reencode_jpeg : int, optional
        After the resize, round-trip through 8-bit JPEG of this quality (``data.reencode_jpeg``;
        75 reproduces how the ``xray-224`` copies were made). An image that already has the
        model's size (a training copy) is left as it is.
    clahe : bool
        Apply :func:`clahe` to the resized image (``data.clahe``).
    """
    draft = 2 * size if jpeg_draft else None
    image = read_image(path, draft_size=draft)
    already = image.shape == (size, size)
    out = preprocess(image, size, resize)
    if reencode_jpeg and not already:
        out = globals()["reencode_jpeg"](out, reencode_jpeg)
    if clahe:
        out = globals()["clahe"](out)
    return out


def load_for_model(path: str | Path, info: dict) -> np.ndarray:
    """The model input of a file for a checkpoint's config: the one call of inference.

    Uses ``info``'s ``image_size``, ``resize``, ``jpeg_draft``, ``reencode_jpeg`` and ``clahe``
    (see :func:`load_image`); prediction, evaluation, Grad-CAM and export all call this.
    """
    return load_image(
        path, int(info["image_size"]), info.get("resize", "squash"),
        bool(info.get("jpeg_draft", True)), reencode_jpeg=info.get("reencode_jpeg"),
        clahe=bool(info.get("clahe", False)),
    )


# ----------------------------------------------------------------------------------- hashing
def content_hash(path: str | Path) -> str:
    """SHA-256 (hex) of the file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# ----------------------------------------------------------------------------------- splits
def patient_split(
    records: Sequence[ImageRecord], val_fraction: float, seed: int = 0
) -> tuple[list[ImageRecord], list[ImageRecord]]:
    """Split into (train, val) so that no patient is in both, stratified by class.

    Uses scikit-learn's ``StratifiedGroupKFold`` with ``round(1 / val_fraction)`` folds and
    takes the first fold as validation.

    Parameters
    ----------
    records : sequence of ImageRecord
        Labelled images.
    val_fraction : float
        Wanted validation share, in (0, 0.5].
    seed : int
        Shuffling seed (same seed, same split).
    """
    from sklearn.model_selection import StratifiedGroupKFold

    if not 0 < val_fraction <= 0.5:
        raise ValueError(f"val_fraction must be in (0, 0.5], not {val_fraction}")
    records = list(records)
    n_splits = max(2, round(1 / val_fraction))
    labels = np.array([r.label for r in records])
    groups = np.array([r.patient_id for r in records])
    n_patients = len(set(groups.tolist()))
    if n_patients < n_splits:
        raise DatasetError(
            f"only {n_patients} patients: too few for a {val_fraction:.0%} patient-disjoint split"
        )
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    train_idx, val_idx = next(splitter.split(np.zeros(len(records)), labels, groups))
    return [records[i] for i in train_idx], [records[i] for i in val_idx]


def shared_patients(a: Sequence[ImageRecord], b: Sequence[ImageRecord]) -> dict[str, int]:
    """Patient ids present in both sets, with the number of images of each in ``b``."""
    ids_a = {r.patient_id for r in a}
    return dict(sorted(Counter(r.patient_id for r in b if r.patient_id in ids_a).items()))


class LeakageError(ValueError):
    """Evaluation images whose content hash is in the model's training set."""


def leakage_check(
    hashes: dict[str, str],
    train_hashes: set[str] | frozenset[str],
    *,
    allow: bool = False,
) -> list[str]:
    """Refuse evaluation images that the model was trained on (same bytes).

    Parameters
    ----------
    hashes : dict
        ``{file: sha256}`` of the evaluation images.
    train_hashes : set of str
        SHA-256 of every training image (stored in the checkpoint).
    allow : bool
        Only warn instead of raising (the ``allow_train_overlap`` override).

    Returns
    -------
    list of str
        The files that were in training.

    Raises
    ------
    LeakageError
        When any file is in the training set and ``allow`` is false.
    """
    leaked = sorted(f for f, h in hashes.items() if h in train_hashes)
    if leaked and not allow:
        shown = ", ".join(leaked[:5]) + (" ..." if len(leaked) > 5 else "")
        raise LeakageError(
            f"{len(leaked)} of {len(hashes)} evaluation images are byte-identical to training "
            f"images of this checkpoint (e.g. {shown}); refusing to evaluate on training data. "
            "Pass allow_train_overlap=true to override."
        )
    if leaked:
        log.warning("%d evaluation images are in the training set (override given)", len(leaked))
    return leaked


# ----------------------------------------------------------------------------------- torch
def make_augment(cfg: dict | None):
    """Radiograph augmentation on ``(1, S, S)`` tensors in [0, 1], or ``None``.

    Small affine (rotation, translation, scale), brightness/contrast jitter, optional gamma,
    horizontal flip only when ``hflip`` is set (anatomy is not left-right symmetric).

    Parameters
    ----------
    cfg : dict
        Keys ``degrees`` (deg), ``translate`` (fraction), ``scale`` ([lo, hi]), ``brightness``,
        ``contrast`` (jitter factors), ``gamma`` ([lo, hi] or null), ``hflip`` (bool).
    """
    if not cfg or not cfg.get("enabled", True):
        return None
    import torch
    from torchvision.transforms import v2

    steps = []
    if cfg.get("degrees") or cfg.get("translate") or cfg.get("scale"):
        t = cfg.get("translate") or 0.0
        steps.append(
            v2.RandomAffine(
                degrees=cfg.get("degrees") or 0.0,
                translate=(t, t) if t else None,
                scale=tuple(cfg["scale"]) if cfg.get("scale") else None,
                interpolation=v2.InterpolationMode.BILINEAR,
            )
        )
    if cfg.get("brightness") or cfg.get("contrast"):
        steps.append(
            v2.ColorJitter(brightness=cfg.get("brightness") or 0, contrast=cfg.get("contrast") or 0)
        )
    if cfg.get("hflip"):
        steps.append(v2.RandomHorizontalFlip())
    gamma = cfg.get("gamma")

    def apply(x: torch.Tensor) -> torch.Tensor:
        for step in steps:
            x = step(x)
        if gamma:
            g = float(torch.empty(()).uniform_(float(gamma[0]), float(gamma[1])))
            x = x.clamp(0, 1) ** g
        return x.clamp(0, 1)

    return apply if steps or gamma else None


class XrayDataset:
    """Map-style dataset: ``(image (1, S, S) float32 in [0, 1], label)``.

    Parameters
    ----------
    records : sequence of ImageRecord
        Images (``label`` None becomes -1).
    size, resize, jpeg_draft
        See :func:`load_image`.
    augment : callable, optional
        Tensor transform from :func:`make_augment` (training only).
    cache : bool
        Keep decoded, resized images in memory (float32, 200 KB per image at 224 px, per
        worker process: use with ``persistent_workers``).
    reencode_jpeg, clahe
        See :func:`load_image`.
    """

    def __init__(
        self,
        records: Sequence[ImageRecord],
        size: int,
        resize: str = "squash",
        jpeg_draft: bool = True,
        augment=None,
        cache: bool = False,
        reencode_jpeg: int | None = None,
        clahe: bool = False,
    ) -> None:
        self.records = list(records)
        self.size, self.resize, self.jpeg_draft = size, resize, jpeg_draft
        self.reencode_jpeg, self.clahe = reencode_jpeg, clahe
        self.augment = augment
        self._cache: dict[int, np.ndarray] | None = {} if cache else None

    def __len__(self) -> int:
        return len(self.records)

    def image(self, index: int) -> np.ndarray:
        """The preprocessed ``(S, S)`` float32 image."""
        if self._cache is not None and index in self._cache:
            return self._cache[index]
        arr = load_image(self.records[index].path, self.size, self.resize, self.jpeg_draft,
                         reencode_jpeg=self.reencode_jpeg, clahe=self.clahe)
        if self._cache is not None:
            self._cache[index] = arr
        return arr

    def __getitem__(self, index: int):
        import torch

        x = torch.from_numpy(self.image(index)).unsqueeze(0)
        if self.augment is not None:
            x = self.augment(x)
        label = self.records[index].label
        return x, -1 if label is None else int(label)
