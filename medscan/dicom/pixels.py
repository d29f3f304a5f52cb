"""Decode a series' pixel data into a HU :class:`~medscan.volume.Volume`.

* Pixel data go through pydicom 3 (``Dataset.pixel_array``) with its pylibjpeg / GDCM plugins for
  every transfer syntax. JPEG Lossless (Process 14, the common CT compression) is decoded with
  imagecodecs (libjpeg-turbo 3, else liblj92) when it is installed: 4-6x faster than
  pylibjpeg-libjpeg on RICORD, and it releases the GIL, so a thread pool decodes slices in
  parallel. Any failure of that fast path falls back to pydicom.
* HU = stored * RescaleSlope + RescaleIntercept, per slice. int16 when every slope and intercept
  is integral and the result fits, else float32.
* Padding -- stored values equal to PixelPaddingValue (or within PixelPaddingRangeLimit) and any
  HU <= :data:`PADDING_HU` (the -2048 / -3024 written outside the scan circle) -- becomes
  :data:`~medscan.volume.AIR_HU`, so it can never pass as tissue.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.encaps import generate_frames
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from medscan.dicom.headers import SliceHeader
from medscan.dicom.resample import regularize_stack
from medscan.dicom.series import SeriesInfo
from medscan.volume import AIR_HU, Finding, Volume

try:  # optional fast JPEG Lossless decoders (release the GIL)
    from imagecodecs import jpeg8_decode as _jpeg8_decode
    from imagecodecs import ljpeg_decode as _ljpeg_decode
except ImportError:  # pragma: no cover - depends on the environment
    _jpeg8_decode = _ljpeg_decode = None

#: HU at or below this are padding / outside the field of view (real air is about -1000).
PADDING_HU = -2000
#: JPEG Lossless Process 14 (SV1 and any predictor).
JPEG_LOSSLESS = {"1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70"}
#: Uncompressed little-endian transfer syntaxes (read without pydicom in :func:`load`).
NATIVE_LITTLE_ENDIAN = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1"}
#: JPEG, JPEG-LS and JPEG 2000 transfer syntaxes (codestreams end with FFD9).
JPEG_FAMILY = {
    "1.2.840.10008.1.2.4.50",
    "1.2.840.10008.1.2.4.51",
    "1.2.840.10008.1.2.4.57",
    "1.2.840.10008.1.2.4.70",
    "1.2.840.10008.1.2.4.80",
    "1.2.840.10008.1.2.4.81",
    "1.2.840.10008.1.2.4.90",
    "1.2.840.10008.1.2.4.91",
}
#: Files per slice below which a thread pool does not pay.
PARALLEL_MIN_SLICES = 8


class SeriesError(RuntimeError):
    """A series cannot become a volume; the message names the files and the reason."""


def _signed(arr: np.ndarray, pixel_representation: int, bits_stored: int) -> np.ndarray:
    """Interpret raw unsigned samples as two's complement when the data are signed."""
    if pixel_representation != 1 or arr.dtype.kind == "i":
        return arr
    width = arr.dtype.itemsize * 8
    signed = arr.view(f"int{width}")
    if bits_stored < width:
        shift = width - bits_stored
        signed = (signed << shift) >> shift
    return signed


def _check_end_marker(ds: pydicom.Dataset, path: Path) -> bytes | None:
    """Return the single frame of a JPEG-family file after checking its end marker.

    JPEG decoders are lenient: a cut stream decodes to an image with a blank bottom and no
    error. Every JPEG, JPEG-LS and JPEG 2000 codestream ends with the marker FFD9 (EOI/EOC),
    so its absence means the pixel data are truncated.
    """
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    # Encoders pad odd-length frames with one byte (not always 0x00), some with a few more.
    if b"\xff\xd9" not in frame.rstrip(b"\x00")[-64:]:
        raise ValueError("compressed pixel data have no end-of-image marker (truncated)")
    return frame


def decode_file(path: str | os.PathLike[str]) -> np.ndarray:
    """Decode the stored pixel values of a single-frame DICOM file.

    Parameters
    ----------
    path : str or PathLike
        The file.

    Returns
    -------
    numpy.ndarray
        Shape ``(rows, columns)``, the stored values (before rescale), signed when
        PixelRepresentation is 1.
    """
    ds = pydicom.dcmread(path, force=True)  # force: bare datasets (no DICM marker) too
    if "TransferSyntaxUID" not in getattr(ds, "file_meta", {}):
        implicit, _little = ds.original_encoding
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = (
            ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
        )
    ts = str(ds.file_meta.TransferSyntaxUID)
    frame = None
    if ts in JPEG_FAMILY and int(ds.get("NumberOfFrames", 1) or 1) == 1:
        frame = _check_end_marker(ds, Path(path))
    if frame is not None and ts in JPEG_LOSSLESS and _ljpeg_decode is not None:
        for decoder in (_jpeg8_decode, _ljpeg_decode):  # libjpeg-turbo 3, then liblj92
            try:
                arr = decoder(frame)
            except Exception:
                continue
            if arr.shape == (ds.Rows, ds.Columns) and arr.dtype.itemsize * 8 >= ds.BitsStored:
                return _signed(
                    arr, int(ds.PixelRepresentation), int(ds.get("BitsStored", 16))
                )
    return ds.pixel_array


def _read_native(h: SliceHeader) -> np.ndarray | None:
    """Read little-endian native pixel data straight from the file (offsets from discover).

    Avoids parsing the header a second time; None when the fast path does not apply.
    """
    if (
        h.native_pixels is None
        or h.transfer_syntax not in NATIVE_LITTLE_ENDIAN
        or h.bits_allocated not in (8, 16)
        or h.samples_per_pixel != 1
        or h.frames != 1
    ):
        return None
    offset, length = h.native_pixels
    itemsize = h.bits_allocated // 8
    if length < h.rows * h.columns * itemsize:
        return None
    kind = "i" if h.pixel_representation == 1 else "u"
    with open(h.path, "rb") as fp:
        fp.seek(offset)
        buf = fp.read(h.rows * h.columns * itemsize)
    arr = np.frombuffer(buf, dtype=f"<{kind}{itemsize}").reshape(h.rows, h.columns)
    if h.pixel_representation == 1 and h.bits_stored < h.bits_allocated:
        shift = h.bits_allocated - h.bits_stored
        arr = (arr << shift) >> shift  # sign-extend, as pydicom does
    return arr


def _hu_dtype(slices: list[SliceHeader]) -> np.dtype:
    """int16 when every slope and intercept is integral (checked per slice later), else float32."""
    pairs = {(h.slope, h.intercept) for h in slices}
    if all(float(s).is_integer() and float(i).is_integer() for s, i in pairs):
        return np.dtype(np.int16)
    return np.dtype(np.float32)


class _TooWide(Exception):
    """A slice's HU do not fit the int16 buffer: reload into a wider one."""


def _fill_slice(out: np.ndarray, k: int, h: SliceHeader) -> dict[str, Any]:
    raw = _read_native(h)
    if raw is None:
        raw = decode_file(h.path)
    if raw.shape != out.shape[1:]:
        raise ValueError(f"decoded shape {raw.shape} differs from {out.shape[1:]}")
    mask = None
    if h.padding_value is not None:
        if h.padding_limit is not None:
            lo, hi = sorted((h.padding_value, h.padding_limit))
            mask = (raw >= lo) & (raw <= hi)
        else:
            mask = raw == h.padding_value
    dst = out[k]
    if out.dtype.kind == "f":
        np.multiply(raw, np.float32(h.slope), out=dst, casting="unsafe")
        dst += np.float32(h.intercept)
    else:
        slope, intercept = int(h.slope), int(h.intercept)
        ends = [int(raw.min()) * slope + intercept, int(raw.max()) * slope + intercept]
        info = np.iinfo(out.dtype)
        if min(ends) < info.min or max(ends) > info.max:
            raise _TooWide
        # Computed in int32, stored straight into the int16 slice (the range was checked).
        if slope == 1:
            np.add(raw, np.int32(intercept), out=dst, casting="unsafe")
        else:
            np.add(raw * np.int32(slope), np.int32(intercept), out=dst, casting="unsafe")
    low = dst <= PADDING_HU
    mask = low if mask is None else mask | low
    n_pad = int(np.count_nonzero(mask))
    if n_pad:
        np.copyto(dst, dst.dtype.type(AIR_HU), where=mask)
    return {"padding": n_pad}


def _default_workers(series: SeriesInfo) -> int:
    if series.n_slices < PARALLEL_MIN_SLICES:
        return 1
    fast = series.transfer_syntax in NATIVE_LITTLE_ENDIAN or (
        series.transfer_syntax in JPEG_LOSSLESS and _ljpeg_decode is not None
    )
    if fast:  # file reads, imagecodecs and numpy release the GIL: threads pay (measured)
        return max(1, min(4, os.cpu_count() or 1))
    # pydicom + pylibjpeg decoding holds the GIL: threads do not pay (measured).
    return 1


def _decode_all(
    series: SeriesInfo, dtype: np.dtype, n_workers: int, progress: bool
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    slices = series.slices
    out = np.empty(series.shape, dtype=dtype)
    errors: list[tuple[Path, str]] = []

    def work(k: int) -> dict[str, Any] | None:
        try:
            return _fill_slice(out, k, slices[k])
        except _TooWide:
            raise
        except Exception as exc:
            errors.append((slices[k].path, f"{type(exc).__name__}: {exc}"))
            return None

    pool = ThreadPoolExecutor(n_workers) if n_workers > 1 else None
    try:
        it = pool.map(work, range(len(slices))) if pool else map(work, range(len(slices)))
        if progress and len(slices) >= 100:
            from rich.console import Console
            from rich.progress import track

            it = track(
                it,
                total=len(slices),
                description=f"Decoding {series.case_id}",
                console=Console(stderr=True),
                transient=True,
            )
        results = list(it)
    finally:
        if pool:
            pool.shutdown(cancel_futures=True)
    if errors:
        errors.sort()
        listing = "; ".join(f"{p}: {why}" for p, why in errors[:10])
        more = f" (+{len(errors) - 10} more)" if len(errors) > 10 else ""
        raise SeriesError(
            f"series {series.case_id}: {len(errors)} of {len(slices)} slice(s) failed to "
            f"decode: {listing}{more}"
        )
    return out, [r for r in results if r is not None]


def load(
    series: SeriesInfo,
    *,
    workers: int | None = None,
    uniform: bool = False,
    progress: bool = False,
) -> Volume:
    """Decode ``series`` into a HU volume.

    Parameters
    ----------
    series : SeriesInfo
        From :func:`medscan.dicom.discover`.
    workers : int, optional
        Decoding threads; default: up to 4 (and at most the CPU count) for uncompressed and
        JPEG Lossless data (whose readers release the GIL), 1 otherwise.
    uniform : bool
        If True and the slice steps vary (non-uniform spacing or gaps), resample the stack to
        the median step along its stacking line (linear interpolation, see
        :mod:`medscan.dicom.resample`) and add a ``resampled`` finding. Default False: the
        acquired slices are kept and the affine uses the mean step.
    progress : bool
        Show a rich progress bar (stderr) for series of 100 slices or more.

    Returns
    -------
    Volume
        ``hu`` (z, y, x) int16 (float32 for a non-integral rescale or HU beyond the int16
        range), padding = AIR_HU; ``affine``
        index -> LPS mm; the series' findings plus a ``padding`` finding.

    Raises
    ------
    SeriesError
        When the series has no geometry or pixel data, an unsupported layout, or a slice fails
        to decode (the message names the files and the reasons).
    """
    blocking = [f for f in series.findings if f.severity == "error" and f.code != "mixed_patients"]
    if blocking or series.affine is None or not series.slices:
        reasons = "; ".join(f"{f.code}: {f.message}" for f in blocking) or "no slice geometry"
        raise SeriesError(
            f"series {series.case_id} ({series.n_slices} files, first "
            f"{series.files[0] if series.files else '-'}) cannot be loaded: {reasons}"
        )
    slices = series.slices
    dtype = _hu_dtype(slices)
    n_workers = workers if workers is not None else _default_workers(series)
    try:
        out, stats = _decode_all(series, dtype, n_workers, progress)
    except _TooWide:  # rare: HU beyond int16 (e.g. 16-bit unsigned data): float32, exact
        out, stats = _decode_all(series, np.dtype(np.float32), n_workers, progress)

    findings = list(series.findings)
    n_pad = sum(s["padding"] for s in stats)
    if n_pad:
        pv = sorted({h.padding_value for h in slices if h.padding_value is not None})
        findings.append(
            Finding(
                "padding",
                "info",
                f"{n_pad} voxels of padding (PixelPaddingValue {pv or 'none'}, or <= "
                f"{PADDING_HU} HU outside the field of view) set to {AIR_HU} HU",
                [],
                {"voxels": n_pad, "pixel_padding_value": pv, "air_hu": AIR_HU},
            )
        )
    affine = series.affine.copy()
    uneven = {"nonuniform_spacing", "missing_slices"} & {f.code for f in series.findings}
    if uniform and uneven and len(slices) > 1:
        positions = np.array([h.position for h in slices])
        try:
            out, affine, info = regularize_stack(out, positions, affine)
        except ValueError as exc:
            raise SeriesError(f"series {series.case_id}: cannot resample: {exc}") from exc
        findings.append(
            Finding(
                "resampled",
                "info",
                f"{len(slices)} unevenly spaced slices resampled (linear) to "
                f"{info['n_slices']} slices {info['step_mm']:.4g} mm apart along the stacking "
                "line",
                [],
                info,
            )
        )
    metadata = dict(series.metadata)
    metadata.update(
        {
            "n_slices": series.n_slices,
            "transfer_syntax": series.transfer_syntax_name,
            "transfer_syntax_uid": series.transfer_syntax,
            "spacing_mm": list(series.spacing),
            "padding_voxels": n_pad,
            "air_hu": AIR_HU,
        }
    )
    return Volume(
        hu=out,
        affine=affine,
        case_id=series.case_id,
        patient_id=series.patient_id,
        metadata=metadata,
        findings=findings,
        files=[str(p) for p in series.files],
    )
