"""Decode a series' pixel data into a HU :class:`~medscan.volume.Volume`.

* Pixel data go through pydicom 3 (``Dataset.pixel_array``) with its pylibjpeg / GDCM plugins for
  every transfer syntax. JPEG Lossless (Process 14, the common CT compression) is decoded with
  pylibjpeg-libjpeg by default: it refuses corrupt entropy-coded data ("invalid huffman code")
  that imagecodecs' libjpeg-turbo 3 decodes into garbage with only a libjpeg warning, which
  imagecodecs does not report (``docs/reliability.md``). libjpeg-turbo is 4-5x faster and
  releases the GIL; ``MEDSCAN_JPEG_LOSSLESS_DECODER=libjpeg-turbo`` selects it for trusted data.
* One decoder per transfer syntax, no fallback: a stream the chosen (conformant) decoder refuses
  fails its slice. imagecodecs' liblj92 (``ljpeg_decode``) is never used by default: it decodes
  corrupt streams that libjpeg-turbo and libjpeg refuse into garbage, and it segfaults on some
  (``docs/reliability.md``). ``MEDSCAN_JPEG_LOSSLESS_DECODER`` picks another decoder
  (:data:`JPEG_LOSSLESS_DECODERS`) for comparisons.
* Compressed pixel data are decoded in a worker process (:mod:`medscan.dicom.contain`), so a
  crashing or hanging native decoder fails that series ("decoder crashed", naming the slices)
  instead of killing the batch. Uncompressed data are read with NumPy in-process.
* HU = stored * RescaleSlope + RescaleIntercept, per slice. int16 when every slope and intercept
  is integral and the result fits, else float32. A volume with a non-finite HU or affine is never
  returned (:mod:`medscan.dicom.validate` refuses the numbers that could make one).
* Padding -- stored values equal to PixelPaddingValue (or within PixelPaddingRangeLimit) and any
  HU <= :data:`PADDING_HU` (the -2048 / -3024 written outside the scan circle) -- becomes
  :data:`~medscan.volume.AIR_HU`, so it can never pass as tissue.
"""

from __future__ import annotations

import itertools
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.encaps import generate_frames
from pydicom.pixels import get_decoder
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from medscan.dicom.contain import (
    DONE,
    STARTED,
    ContainedError,
    DecodeCancelled,
    run_contained_parts,
)
from medscan.dicom.headers import SliceHeader
from medscan.dicom.resample import regularize_stack
from medscan.dicom.series import SeriesInfo, blocking_findings, loadable
from medscan.dicom.validate import affine_problem
from medscan.hpc import usable_cpus
from medscan.volume import AIR_HU, Finding, Volume

try:  # optional fast JPEG Lossless decoder (libjpeg-turbo 3; releases the GIL)
    from imagecodecs import jpeg8_decode as _jpeg8_decode
except ImportError:  # pragma: no cover - depends on the environment
    _jpeg8_decode = None

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
#: Slices from which a contained decode that holds the GIL (pylibjpeg) is split over two worker
#: processes when two CPUs are usable: a worker's start costs about 0.5-1 s of CPU (imports),
#: RICORD's 255 JPEG Lossless slices take about 3 s in one worker (docs/performance.md).
SPLIT_MIN_SLICES = 64
#: Most worker processes one contained decode uses.
MAX_DECODE_PROCESSES = 2
#: Default cap on the bytes one volume may allocate (``load(max_bytes=...)`` or the environment
#: variable ``MEDSCAN_MAX_VOLUME_GIB`` change it): 16 GiB is about 32k slices of 512 x 512 int16.
DEFAULT_MAX_VOLUME_GIB = 16.0
MAX_VOLUME_ENV = "MEDSCAN_MAX_VOLUME_GIB"


def max_volume_bytes(max_bytes: int | None = None) -> int:
    """The allocation cap in bytes: ``max_bytes``, else ``$MEDSCAN_MAX_VOLUME_GIB``, else 16 GiB.

    Raises
    ------
    ValueError
        When the environment variable is not a positive number.
    """
    if max_bytes is not None:
        return int(max_bytes)
    text = os.environ.get(MAX_VOLUME_ENV, "").strip()
    if not text:
        return int(DEFAULT_MAX_VOLUME_GIB * 2**30)
    try:
        gib = float(text)
    except ValueError:
        gib = -1.0
    if not gib > 0:
        raise ValueError(f"{MAX_VOLUME_ENV}={text!r}: need a positive number of GiB")
    return int(gib * 2**30)


def _check_allocation(series: SeriesInfo, dtype: np.dtype, cap: int) -> None:
    need = int(np.prod(series.shape, dtype=np.int64)) * dtype.itemsize
    if need > cap:
        raise SeriesError(
            f"series {series.case_id}: the volume {series.shape[0]} x {series.shape[1]} x "
            f"{series.shape[2]} {dtype.name} needs {need / 2**30:.2f} GiB, more than the "
            f"allocation cap of {cap / 2**30:.2f} GiB (raise it with {MAX_VOLUME_ENV} or "
            "load(max_bytes=...))"
        )


#: Uncompressed transfer syntaxes: decoded by NumPy / pydicom's pure-Python code, no native
#: decoder involved, so they need no containment (implicit/explicit LE, explicit BE, deflated).
UNCOMPRESSED = NATIVE_LITTLE_ENDIAN | {"1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99"}
#: Decoders for JPEG Lossless, chosen by ``$MEDSCAN_JPEG_LOSSLESS_DECODER``. The default is
#: ``pylibjpeg-libjpeg`` (through pydicom): the strict one; ``libjpeg-turbo`` (imagecodecs) is
#: faster but accepts corrupt Huffman codes silently (imagecodecs drops libjpeg's warnings).
#: ``liblj92`` is lenient and crashes on corrupt streams: for decoder comparisons only.
JPEG_LOSSLESS_DECODERS = ("libjpeg-turbo", "pylibjpeg-libjpeg", "liblj92")
DECODER_ENV = "MEDSCAN_JPEG_LOSSLESS_DECODER"
#: pydicom decoding plugins in order of preference (conformant reference codecs first); only the
#: first installed one is used for a transfer syntax (:func:`pydicom_plugin`).
PYDICOM_PLUGINS = ("pylibjpeg", "gdcm", "pyjpegls", "pydicom", "pillow")
#: ``$MEDSCAN_DECODE_CONTAINED=0`` decodes compressed data in-process (trusted input only).
CONTAIN_ENV = "MEDSCAN_DECODE_CONTAINED"


class SeriesError(RuntimeError):
    """A series cannot become a volume; the message names the files and the reason."""


def normalise_stored(
    arr: np.ndarray, bits_stored: int, high_bit: int | None, pixel_representation: int
) -> np.ndarray:
    """Keep only the stored bits of each pixel cell: the one step after every decoder.

    PS3.5 8.1.1: a cell of BitsAllocated bits holds BitsStored bits ending at HighBit; the other
    bits are not pixel data (overlays, garbage). Decoders differ in what they return (native
    reads give the whole cell, codecs may return sign-extended or raw samples), so every decoded
    array goes through this function: unsigned data are masked to BitsStored, signed data are
    sign-extended from HighBit. Idempotent: applying it to already clean values changes nothing.

    Parameters
    ----------
    arr : numpy.ndarray
        Integer samples as decoded (any width >= BitsStored, signed or unsigned).
    bits_stored : int
        BitsStored (0028,0101).
    high_bit : int or None
        HighBit (0028,0102); None means ``bits_stored - 1``.
    pixel_representation : int
        0 unsigned, 1 two's complement.

    Returns
    -------
    numpy.ndarray
        Same shape; ``intN`` when signed, ``uintN`` when unsigned (N = the input width).

    Raises
    ------
    ValueError
        When the array is not integer or BitsStored / HighBit do not fit its width.
    """
    if arr.dtype.kind not in "iu":
        raise ValueError(f"decoded pixel data are {arr.dtype}, not integer samples")
    width = arr.dtype.itemsize * 8
    high = bits_stored - 1 if high_bit is None else int(high_bit)
    if not 1 <= bits_stored <= high + 1 <= width:
        raise ValueError(
            f"BitsStored {bits_stored} / HighBit {high} do not fit {width}-bit decoded samples"
        )
    top = width - 1 - high  # bits above HighBit, shifted out
    low = width - bits_stored  # then shift back down: drops bits below the stored range too
    if pixel_representation == 1:
        work = arr.view(f"int{width}") if arr.dtype.kind == "u" else arr
        if top == 0 and low == 0:
            return work
        return (work << top) >> low  # arithmetic shift: sign-extends from HighBit
    work = arr.view(f"uint{width}") if arr.dtype.kind == "i" else arr
    if top == 0 and low == 0:
        return work
    return (work << np.array(top, work.dtype)) >> np.array(low, work.dtype)


def _normalise_ds(arr: np.ndarray, ds: pydicom.Dataset) -> np.ndarray:
    return normalise_stored(
        arr,
        int(ds.get("BitsStored", 16) or 16),
        int(ds.HighBit) if ds.get("HighBit", None) not in (None, "") else None,
        int(ds.get("PixelRepresentation", 0) or 0),
    )


def unsupported_syntax(uid: str) -> str | None:
    """Why pixel data in transfer syntax ``uid`` cannot be decoded here, or None if they can.

    Asks pydicom's decoder registry (``pydicom.pixels.get_decoder``) which syntaxes it knows
    and whether an installed plugin (pylibjpeg, pillow, gdcm, ...) can decode them.

    Parameters
    ----------
    uid : str
        Transfer syntax UID ("" for a bare dataset, which is native by definition).

    Returns
    -------
    str or None
        ``"unsupported transfer syntax <name> (<uid>): ..."``, or None.
    """
    if not uid:
        return None
    from pydicom.pixels import get_decoder

    name = pydicom.uid.UID(uid).name
    try:
        decoder = get_decoder(uid)
    except NotImplementedError:
        return f"unsupported transfer syntax {name} ({uid}): pydicom has no decoder for it"
    if not decoder.is_available:
        missing = "; ".join(decoder.missing_dependencies) or "no plugin"
        return f"unsupported transfer syntax {name} ({uid}): no installed decoder ({missing})"
    return None


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


def decode_file(
    path: str | os.PathLike[str], decoder: str | None = None, frame: int | None = None
) -> np.ndarray:
    """Decode the stored pixel values of a single-frame DICOM file (or one frame of a file).

    Parameters
    ----------
    path : str or PathLike
        The file.
    decoder : str, optional
        JPEG Lossless decoder (:data:`JPEG_LOSSLESS_DECODERS`); default
        :func:`jpeg_lossless_decoder`.
    frame : int, optional
        0-based frame of a multi-frame file (only that frame is decoded).

    Returns
    -------
    numpy.ndarray
        Shape ``(rows, columns)``, the stored values (before rescale) after
        :func:`normalise_stored`: signed when PixelRepresentation is 1, bits outside
        BitsStored / HighBit removed.
    """
    ds = pydicom.dcmread(path, force=True)  # force: bare datasets (no DICM marker) too
    if "TransferSyntaxUID" not in getattr(ds, "file_meta", {}):
        implicit, _little = ds.original_encoding
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = (
            ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
        )
    ts = str(ds.file_meta.TransferSyntaxUID)
    if frame is not None and int(ds.get("NumberOfFrames", 1) or 1) > 1:
        from pydicom.pixels import pixel_array

        return _normalise_ds(  # decodes that frame only
            pixel_array(ds, index=frame, decoding_plugin=pydicom_plugin(ts)), ds
        )
    stream = None
    if ts in JPEG_FAMILY and int(ds.get("NumberOfFrames", 1) or 1) == 1:
        stream = _check_end_marker(ds, Path(path))
    if ts in JPEG_LOSSLESS:
        decoder = decoder or jpeg_lossless_decoder()
    if stream is not None and ts in JPEG_LOSSLESS and decoder in ("libjpeg-turbo", "liblj92"):
        # No fallback: what this conformant decoder refuses fails the slice.
        if decoder == "libjpeg-turbo":
            arr = _jpeg8_decode(stream)
        else:
            from imagecodecs import ljpeg_decode

            arr = ljpeg_decode(stream)
        if arr.shape != (ds.Rows, ds.Columns) or arr.dtype.itemsize * 8 < ds.BitsStored:
            raise ValueError(
                f"{decoder} decoded a {arr.shape} {arr.dtype} image; the header says "
                f"{ds.Rows}x{ds.Columns} with {ds.BitsStored} bits stored"
            )
        return _normalise_ds(arr, ds)
    plugin = pydicom_plugin(ts)
    if plugin:  # only this plugin: pydicom would otherwise try the next one when it refuses
        ds.pixel_array_options(decoding_plugin=plugin)
    return _normalise_ds(ds.pixel_array, ds)


def pydicom_plugin(transfer_syntax: str) -> str:
    """The one pydicom decoding plugin used for ``transfer_syntax`` ("" when none is needed).

    pydicom tries every installed plugin in turn until one accepts the data (e.g. pylibjpeg,
    then Pillow for JPEG baseline and JPEG 2000, or pylibjpeg-rle, then its own decoder for RLE),
    which makes the most lenient installed decoder decide. medscan pins the first available in
    :data:`PYDICOM_PLUGINS`, so a stream that decoder refuses fails the slice.

    Parameters
    ----------
    transfer_syntax : str
        Transfer syntax UID.

    Returns
    -------
    str
        Plugin name for ``decoding_plugin=``, or ``""`` (uncompressed syntaxes, unknown ones:
        pydicom then raises its own "no decoder" error).
    """
    try:
        available = get_decoder(UID(transfer_syntax)).available_plugins
    except Exception:  # no decoder for this syntax at all: pydicom names it when decoding
        return ""
    return next((name for name in PYDICOM_PLUGINS if name in available), "")


def jpeg_lossless_decoder() -> str:
    """Name of the JPEG Lossless decoder in use (see :data:`JPEG_LOSSLESS_DECODERS`).

    Returns
    -------
    str
        ``$MEDSCAN_JPEG_LOSSLESS_DECODER`` when set, else ``"pylibjpeg-libjpeg"`` (the decoder
        that refuses corrupt Huffman codes; see :data:`JPEG_LOSSLESS_DECODERS`).

    Raises
    ------
    ValueError
        When the variable names an unknown decoder.
    """
    name = os.environ.get(DECODER_ENV, "").strip()
    if not name:
        return "pylibjpeg-libjpeg"
    if name not in JPEG_LOSSLESS_DECODERS:
        raise ValueError(f"{DECODER_ENV}={name!r}: choose one of {JPEG_LOSSLESS_DECODERS}")
    return name


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
    with open(h.path, "rb") as fp:
        fp.seek(offset)
        buf = fp.read(h.rows * h.columns * itemsize)
    arr = np.frombuffer(buf, dtype=f"<u{itemsize}").reshape(h.rows, h.columns)
    return normalise_stored(arr, h.bits_stored, h.high_bit, h.pixel_representation)


def _hu_dtype(slices: list[SliceHeader]) -> np.dtype:
    """int16 when every slope and intercept is integral (checked per slice later), else float32."""
    pairs = {(h.slope, h.intercept) for h in slices}
    if all(float(s).is_integer() and float(i).is_integer() for s, i in pairs):
        return np.dtype(np.int16)
    return np.dtype(np.float32)


class _TooWide(Exception):
    """A slice's HU do not fit the int16 buffer: reload into a wider one."""


def _fill_slice(
    out: np.ndarray, k: int, h: SliceHeader, decoder: str | None = None
) -> dict[str, Any]:
    raw = _read_native(h)
    if raw is None:
        raw = decode_file(h.path, decoder, h.frame)
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
        series.transfer_syntax in JPEG_LOSSLESS and jpeg_lossless_decoder() != "pylibjpeg-libjpeg"
    )
    if fast:  # file reads, imagecodecs and numpy release the GIL: threads pay (measured)
        return max(1, min(4, os.cpu_count() or 1))
    # pydicom + pylibjpeg decoding holds the GIL: threads do not pay (measured).
    return 1


def decode_processes(series: SeriesInfo, n_workers: int) -> int:
    """Worker processes for a contained decode of ``series``: 1, or 2 when it pays.

    Two when the decode holds the GIL in one thread (``n_workers == 1``: pylibjpeg-libjpeg,
    JPEG 2000, ...; threads do not pay there), the series has :data:`SPLIT_MIN_SLICES` slices
    or more and at least two CPUs are usable; decoders that release the GIL already use
    threads inside one worker.
    """
    if n_workers != 1 or series.n_slices < SPLIT_MIN_SLICES:
        return 1
    return max(1, min(MAX_DECODE_PROCESSES, usable_cpus()))


def split_parts(n: int, parts: int) -> list[tuple[int, int]]:
    """``parts`` contiguous, non-empty ``[start, stop)`` ranges covering ``range(n)``."""
    parts = max(1, min(parts, n))
    bounds = [n * k // parts for k in range(parts + 1)]
    return list(itertools.pairwise(bounds))


def decode_slices(
    out: np.ndarray,
    state: np.ndarray,
    slices: list[SliceHeader],
    n_workers: int,
    decoder: str | None = None,
    cancel: threading.Event | None = None,
) -> tuple[list[dict[str, Any]], list[tuple[Path, str]]]:
    """Fill ``out[k]`` with the HU of ``slices[k]``; runs in-process or in a contained worker.

    Parameters
    ----------
    out : numpy.ndarray
        ``(z, y, x)`` int16 or float32 output.
    state : numpy.ndarray
        ``(z,)`` int8; set to ``STARTED`` / ``DONE`` around each slice (names the slices in
        flight when a decoder crashes, see :mod:`medscan.dicom.contain`).
    slices : list of SliceHeader
        One per output slice.
    n_workers : int
        Decoding threads.
    decoder : str, optional
        JPEG Lossless decoder (passed explicitly: a contained worker does not see later
        changes of the caller's environment).
    cancel : threading.Event, optional
        In-process decoding only: once set, no further slice is started and
        :class:`~medscan.dicom.contain.DecodeCancelled` is raised.

    Returns
    -------
    stats : list of dict
        Per decoded slice, ``{"padding": n}``.
    errors : list of (Path, str)
        Slices that failed to decode, with the reason.

    Raises
    ------
    _TooWide
        When a slice's HU do not fit an int16 ``out``.
    DecodeCancelled
        When ``cancel`` was set.
    """
    errors: list[tuple[Path, str]] = []

    def work(k: int) -> dict[str, Any] | None:
        if cancel is not None and cancel.is_set():
            raise DecodeCancelled("decode cancelled")
        state[k] = STARTED
        try:
            return _fill_slice(out, k, slices[k], decoder)
        except _TooWide:
            raise
        except Exception as exc:
            errors.append((slices[k].path, f"{type(exc).__name__}: {exc}"))
            return None
        finally:
            state[k] = DONE

    if n_workers > 1:
        with ThreadPoolExecutor(n_workers) as pool:
            results = list(pool.map(work, range(len(slices))))
    else:
        results = [work(k) for k in range(len(slices))]
    return [r for r in results if r is not None], sorted(errors)


def _decode_all(
    series: SeriesInfo, dtype: np.dtype, n_workers: int, progress: bool, contain: bool,
    cancel: threading.Event | None = None, processes: int = 1,
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    slices = series.slices
    files = [h.path for h in slices]
    decoder = jpeg_lossless_decoder()
    show = progress and len(slices) >= 100
    bar = None
    if show:
        from rich.console import Console
        from rich.progress import Progress

        bar = Progress(console=Console(stderr=True), transient=True)
        task = bar.add_task(f"Decoding {series.case_id}", total=len(slices))
        bar.start()
    try:
        if contain:
            parts = [(a, b, (slices[a:b], n_workers, decoder))
                     for a, b in split_parts(len(slices), processes)]
            try:
                out, results = run_contained_parts(
                    decode_slices, series.shape, dtype, files, parts,
                    on_progress=(lambda done: bar.update(task, completed=done)) if bar else None,
                    cancel=cancel,
                )
                stats = [s for part_stats, _ in results for s in part_stats]
                errors = sorted(e for _, part_errors in results for e in part_errors)
            except ContainedError as exc:
                named = ", ".join(str(p) for p in exc.files[:10]) or "an unknown slice"
                raise SeriesError(
                    f"series {series.case_id}: {exc} while decoding {named}; the series is "
                    "not loaded"
                ) from exc
        else:
            out = np.empty(series.shape, dtype=dtype)
            state = np.zeros(len(slices), dtype=np.int8)
            stats, errors = decode_slices(out, state, slices, n_workers, decoder, cancel)
    finally:
        if bar is not None:
            bar.stop()
    if errors:
        listing = "; ".join(f"{p}: {why}" for p, why in errors[:10])
        more = f" (+{len(errors) - 10} more)" if len(errors) > 10 else ""
        raise SeriesError(
            f"series {series.case_id}: {len(errors)} of {len(slices)} slice(s) failed to "
            f"decode: {listing}{more}"
        )
    return out, stats


def needs_containment(series: SeriesInfo) -> bool:
    """True when a slice's pixel data need a native decoder (any compressed transfer syntax).

    ``$MEDSCAN_DECODE_CONTAINED=0`` turns containment off (trusted input only).
    """
    if os.environ.get(CONTAIN_ENV, "1").strip() == "0":
        return False
    return any(h.transfer_syntax not in UNCOMPRESSED for h in series.slices)


def load(
    series: SeriesInfo,
    *,
    workers: int | None = None,
    uniform: bool = False,
    progress: bool = False,
    contain: bool | None = None,
    max_bytes: int | None = None,
    cancel: threading.Event | None = None,
    processes: int | None = None,
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
    contain : bool, optional
        Decode in a worker process that may crash (:mod:`medscan.dicom.contain`). Default:
        for compressed pixel data (:func:`needs_containment`); False decodes in-process
        (trusted input only: a crashing native decoder then kills the caller).
    max_bytes : int, optional
        Refuse a volume whose HU array would need more bytes (default
        :func:`max_volume_bytes`: ``$MEDSCAN_MAX_VOLUME_GIB`` or 16 GiB).
    cancel : threading.Event, optional
        Abandon the decode once set (checked between slices in-process, about every 0.2 s
        while a contained worker decodes; the worker is then killed): for loads in a
        background thread (:mod:`medscan.ct.prefetch`).
    processes : int, optional
        Worker processes of a contained decode, each decoding a contiguous range of slices
        into the same shared buffer (the result is the same). Default
        :func:`decode_processes`: 2 for a series of :data:`SPLIT_MIN_SLICES` or more slices
        whose decoder holds the GIL, when two CPUs are usable; else 1.

    Returns
    -------
    Volume
        ``hu`` (z, y, x) int16 (float32 for a non-integral rescale or HU beyond the int16
        range), padding = AIR_HU; ``affine``
        index -> LPS mm; the series' findings plus a ``padding`` finding.

    Raises
    ------
    SeriesError
        When the series has no geometry or pixel data, an unsupported layout or transfer
        syntax, would exceed the allocation cap, a number that fails
        :mod:`medscan.dicom.validate` (its finding code is in the message), a slice fails to
        decode, or the decoder crashed or hung in its worker process ("decoder crashed",
        "decoder timed out"); the message names the files and the reasons. No other exception
        is expected from a bad file (``benchmarks/fuzz_dicom.py`` checks this).
    DecodeCancelled
        When ``cancel`` was set (:mod:`medscan.dicom.contain`).
    """
    blocking = blocking_findings(series)
    if not loadable(series):
        reasons = "; ".join(f"{f.code}: {f.message}" for f in blocking) or "no slice geometry"
        raise SeriesError(
            f"series {series.case_id} ({series.n_slices} files, first "
            f"{series.files[0] if series.files else '-'}) cannot be loaded: "
            f"{reasons}"
        )
    slices = series.slices
    dtype = _hu_dtype(slices)
    n_workers = workers if workers is not None else _default_workers(series)
    n_processes = processes if processes is not None else decode_processes(series, n_workers)
    if contain is None:
        contain = needs_containment(series)
    try:
        cap = max_volume_bytes(max_bytes)
    except ValueError as exc:
        raise SeriesError(str(exc)) from exc
    _check_allocation(series, dtype, cap)
    try:
        out, stats = _decode_all(series, dtype, n_workers, progress, contain, cancel,
                                 n_processes)
    except _TooWide:  # rare: HU beyond int16 (e.g. 16-bit unsigned data): float32, exact
        _check_allocation(series, np.dtype(np.float32), cap)
        out, stats = _decode_all(series, np.dtype(np.float32), n_workers, progress, contain,
                                 cancel, n_processes)

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
    problem = affine_problem(affine)
    if problem is None and out.dtype.kind == "f" and not np.all(np.isfinite(out)):
        problem = f"{int(np.count_nonzero(~np.isfinite(out)))} non-finite HU voxels"
    if problem is not None:  # a last guard: never return a non-finite volume or affine
        raise SeriesError(f"series {series.case_id}: {problem}; the series is not loaded")
    metadata = dict(series.metadata)
    metadata.update(
        {
            "n_slices": series.n_slices,
            "transfer_syntax": series.transfer_syntax_name,
            "transfer_syntax_uid": series.transfer_syntax,
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
