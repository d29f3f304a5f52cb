"""Conformance corpus: medscan's loader vs GDCM (SimpleITK) on many transfer syntaxes.

Two parts:

* pydicom's bundled test files (exact names from ``pydicom.data``) that hold CT/MR-like images
  (one sample per pixel, MONOCHROME), and those of the ``pydicom-data`` package when installed
  (never downloaded);
* re-encodings of a real shared series (``lungdx-a0002-b40f``, two slices, centre 256 x 256) in
  four stored forms -- unsigned 12 bits (the original), signed 12, unsigned 16, signed 16 bits
  stored, all with the same HU -- into every transfer syntax an installed encoder writes:
  pydicom (native syntaxes, Deflate, RLE, JPEG 2000), imagecodecs (HTJ2K) and dcmtk
  (``dcmcjpeg`` JPEG Lossless / Extended, ``dcmcjpls`` JPEG-LS).

Every entry ends as ``equal`` (medscan's HU equal GDCM's, read through SimpleITK, voxel for voxel),
``equal (pydicom)`` (GDCM cannot read it; equal to pydicom's ``pixel_array`` rescaled) or
``refused: <reason>`` (medscan names why it does not load it). Anything else is a failure.

Run ``python tests/dicom_corpus.py [--shared PATH]`` to print the table for ``docs/dicom.md``.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.data import get_testdata_file
from pydicom.encaps import encapsulate
from pydicom.uid import (
    JPEG2000,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    RLELossless,
)

#: pydicom's bundled files with CT/MR-like images (one sample, MONOCHROME), by exact name.
PYDICOM_FILES = [
    "CT_small.dcm",
    "MR_small.dcm",
    "MR_small_implicit.dcm",
    "MR_small_bigendian.dcm",
    "MR_small_expb.dcm",
    "MR_small_RLE.dcm",
    "MR_small_jp2klossless.dcm",
    "MR_small_jpeg_ls_lossless.dcm",
    "MR_small_padded.dcm",
    "MR_truncated.dcm",
    "693_J2KI.dcm",
    "J2K_pixelrep_mismatch.dcm",
    "JPEG2000.dcm",
    "JPEG2000-embedded-sequence-delimiter.dcm",
    "JPEG-lossy.dcm",
    "JPGExtended.dcm",
    "JPEGLSNearLossless_08.dcm",
    "JPEGLSNearLossless_16.dcm",
    "examples_overlay.dcm",
    "image_dfl.dcm",
]
#: The same from the ``pydicom-data`` package (dev extra), used when it is installed.
PYDICOM_DATA_FILES = [
    "693_UNCI.dcm",
    "693_UNCR.dcm",
    "693_J2KR.dcm",
    "MR2_UNCI.dcm",
    "MR2_UNCR.dcm",
    "MR2_J2KR.dcm",
    "MR2_J2KI.dcm",
    "MR-SIEMENS-DICOM-WithOverlays.dcm",
    "JPEG-LL.dcm",
    "JPEG2000_UNC.dcm",
    "eCT_Supplemental.dcm",
    "emri_small.dcm",
    "emri_small_RLE.dcm",
    "emri_small_big_endian.dcm",
    "emri_small_jpeg_2k_lossless.dcm",
    "emri_small_jpeg_2k_lossless_too_short.dcm",
    "emri_small_jpeg_ls_lossless.dcm",
]
#: Modalities loaded as image series in the corpus (the bundled files are CT, MR, NM, OT).
MODALITIES = ("CT", "MR", "NM", "OT")

HTJ2K_LOSSLESS = "1.2.840.10008.1.2.4.201"
JPEG_LOSSLESS_SV1 = "1.2.840.10008.1.2.4.70"
JPEG_LOSSLESS_P14 = "1.2.840.10008.1.2.4.57"
JPEG_EXTENDED = "1.2.840.10008.1.2.4.51"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
JPEGLS_LOSSLESS = "1.2.840.10008.1.2.4.80"
JPEGLS_NEAR = "1.2.840.10008.1.2.4.81"
#: Lossy syntaxes: decoders may round differently (compared to pydicom, GDCM within 1 unit).
LOSSY = {JPEG_BASELINE, JPEG_EXTENDED, JPEGLS_NEAR, "1.2.840.10008.1.2.4.91",
         "1.2.840.10008.1.2.4.203"}

#: Syntaxes of the re-encoding matrix, with the encoder used.
SYNTAXES: dict[str, str] = {
    ImplicitVRLittleEndian: "pydicom",
    ExplicitVRLittleEndian: "pydicom",
    ExplicitVRBigEndian: "pydicom",
    DeflatedExplicitVRLittleEndian: "pydicom",
    RLELossless: "pydicom",
    JPEG2000Lossless: "pydicom (openjpeg)",
    JPEG2000: "pydicom (openjpeg)",
    HTJ2K_LOSSLESS: "imagecodecs",
    JPEGLS_LOSSLESS: "dcmtk dcmcjpls",
    JPEGLS_NEAR: "dcmtk dcmcjpls",
    JPEG_LOSSLESS_SV1: "dcmtk dcmcjpeg",
    JPEG_LOSSLESS_P14: "dcmtk dcmcjpeg",
    JPEG_EXTENDED: "dcmtk dcmcjpeg",
    JPEG_BASELINE: "dcmtk dcmcjpeg",
}
#: Stored forms: (name, PixelRepresentation, BitsStored, offset added to the 12-bit raw value).
VARIANTS = [
    ("unsigned 12", 0, 12, 0),
    ("signed 12", 1, 12, -2048),
    ("unsigned 16", 0, 16, 30000),
    ("signed 16", 1, 16, -20000),
]
CROP = 256
N_SLICES = 2


@dataclass
class Outcome:
    """One corpus entry's result."""

    name: str
    syntax: str
    form: str
    result: str  # "equal", "equal (pydicom...)", "refused: ...", or "WRONG: ..."
    pixels: str = ""  # bundled files: decode_file alone vs the reference

    @property
    def ok(self) -> bool:
        """No wrong value (equal, or refused with a reason)."""
        return not (self.result.startswith("WRONG") or self.pixels.startswith("WRONG"))


# -- references -----------------------------------------------------------------------------


def gdcm_values(path: Path, frame: int = 0) -> np.ndarray | None:
    """Rescaled values of one frame as GDCM reads them (via SimpleITK), or None if it cannot."""
    import SimpleITK as sitk

    try:
        img = sitk.ReadImage(str(path), sitk.sitkFloat64)
    except RuntimeError:
        return None
    arr = sitk.GetArrayFromImage(img)
    return arr.reshape(-1, *arr.shape[-2:])[frame]


def pydicom_values(path: Path, frame: int = 0) -> np.ndarray:
    """Rescaled values of one frame from pydicom's ``pixel_array``.

    The rescale is the top-level one, else the frame's functional group (Enhanced CT/MR).
    """
    ds = pydicom.dcmread(path)
    arr = ds.pixel_array
    arr = arr.reshape(-1, *arr.shape[-2:])[frame].astype(np.float64)
    slope, intercept = _rescale(path, frame)
    return arr * slope + intercept


def _rescale(path: Path, frame: int = 0) -> tuple[float, float]:
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    source = ds
    if "RescaleSlope" not in ds:
        for groups in (ds.get("PerFrameFunctionalGroupsSequence"),
                       ds.get("SharedFunctionalGroupsSequence")):
            item = groups[frame if len(groups) > frame else 0] if groups else None
            seq = item.get("PixelValueTransformationSequence") if item is not None else None
            if seq:
                source = seq[0]
                break
    return (float(source.get("RescaleSlope", 1) or 1),
            float(source.get("RescaleIntercept", 0) or 0))


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal values; float32 HU (non-integral slopes) may differ from float64 in the 7th digit."""
    return bool(np.allclose(a, b, rtol=1e-6, atol=1e-3))


def compare(values: np.ndarray, path: Path, syntax_uid: str, keep: np.ndarray | None = None,
            frame: int = 0) -> str:
    """Compare rescaled values of one file with GDCM (lossless) or pydicom (lossy / no GDCM).

    Lossy decoders (JPEG DCT, JPEG-LS near-lossless, irreversible JPEG 2000) may round
    differently (ISO 10918-2 allows it): there medscan must equal pydicom exactly and stay
    within one stored unit of GDCM.
    """
    slope, _ = _rescale(path, frame)
    keep = np.ones(values.shape, bool) if keep is None else keep
    gdcm = gdcm_values(path, frame)
    if gdcm is not None and gdcm.shape != values.shape:
        return f"WRONG: shape {values.shape}, GDCM {gdcm.shape}"
    if gdcm is not None and _same(values[keep], gdcm[keep]):
        return "equal"
    ref = pydicom_values(path, frame)
    if ref.shape != values.shape or not _same(values[keep], ref[keep]):
        worst = np.abs(values[keep] - (gdcm if gdcm is not None else ref)[keep]).max()
        return f"WRONG: differs from {'GDCM' if gdcm is not None else 'pydicom'} by {worst:g}"
    if gdcm is None:
        return "equal (pydicom; GDCM cannot read it)"
    lsb = float(np.abs(values[keep] - gdcm[keep]).max()) / abs(slope)
    if syntax_uid in LOSSY and lsb <= 1.001:  # float32 HU: 1 unit may read as 1.00001
        return f"equal (pydicom); GDCM differs by <= {lsb:.0f} stored unit (lossy rounding)"
    return f"WRONG: equals pydicom but differs from GDCM by {lsb:g} stored units"


def medscan_outcome(folder: Path, name: str, syntax: str, form: str) -> Outcome:
    """Load ``folder`` with medscan and compare each slice with GDCM (or pydicom)."""
    from medscan.dicom import SeriesError, discover, load
    from medscan.dicom.pixels import PADDING_HU
    from medscan.volume import AIR_HU

    found = discover(folder, modalities=MODALITIES)
    if not found.series:
        reasons = [s.reason for s in found.skipped]
        reasons += [f"{f.code}: {f.message}" for s in found.other_series for f in s.findings
                    if f.severity != "info" or f.code == "non_volume"]
        if not reasons:
            return Outcome(name, syntax, form, "WRONG: nothing found and no reason given")
        return Outcome(name, syntax, form, f"refused: {reasons[0]}")
    series = found.series[0]
    try:
        vol = load(series)
    except SeriesError as exc:
        text = str(exc)
        cut = text.find("cannot be loaded: ")
        return Outcome(name, syntax, form, "refused: " + (text[cut + 18 :] if cut >= 0 else text))
    hu = np.asarray(vol.hu, dtype=np.float64)
    results = []
    for k, f in enumerate(vol.files):
        path = Path(f)
        frame = series.slices[k].frame or 0
        ref = gdcm_values(path, frame)
        ref = pydicom_values(path, frame) if ref is None else ref
        slope, intercept = _rescale(path, frame)
        pad = pydicom.dcmread(path, stop_before_pixels=True).get("PixelPaddingValue", None)
        keep = ref > PADDING_HU
        if pad is not None:
            keep &= ref != float(pad) * slope + intercept
        if hu[k].shape == ref.shape and not np.all(hu[k][~keep] == AIR_HU):
            return Outcome(name, syntax, form, "WRONG: padding not set to AIR_HU")
        results.append(compare(hu[k], path, series.transfer_syntax, keep, frame))
    bad = [r for r in results if r.startswith("WRONG")]
    return Outcome(name, syntax, form, bad[0] if bad else max(results, key=len))


def pixel_outcome(path: Path) -> str:
    """``decode_file`` (stored values after normalisation) rescaled, vs GDCM / pydicom."""
    from medscan.dicom import decode_file

    ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
    try:
        stored = decode_file(path)
    except Exception as exc:  # the decoder's refusal is an outcome of the corpus
        return " ".join(f"refused: {type(exc).__name__}: {exc}".split())[:160]
    slope, intercept = _rescale(path)
    values = stored.reshape(-1, *stored.shape[-2:])[0].astype(np.float64) * slope + intercept
    return compare(values, path, str(ds.file_meta.TransferSyntaxUID))


# -- pydicom's bundled files ----------------------------------------------------------------


def pydicom_corpus(work: Path) -> list[Outcome]:
    """Each bundled CT/MR-like file alone in a folder, loaded and compared."""
    out = []
    names = list(PYDICOM_FILES)
    if get_testdata_file(PYDICOM_DATA_FILES[0], download=False) is not None:
        names += PYDICOM_DATA_FILES  # pydicom-data is installed (never downloaded here)
    for name in names:
        src = Path(get_testdata_file(name, download=False))
        ds = pydicom.dcmread(src, stop_before_pixels=True, force=True)
        syntax = UID(str(ds.file_meta.TransferSyntaxUID)).name
        form = (f"{'signed' if ds.get('PixelRepresentation', 0) else 'unsigned'} "
                f"{ds.get('BitsStored')}")
        folder = work / "pydicom" / name
        folder.mkdir(parents=True)
        shutil.copy2(src, folder / name)
        outcome = medscan_outcome(folder, name, syntax, form)
        outcome.pixels = pixel_outcome(folder / name)
        out.append(outcome)
    return out


# -- re-encodings of a real series ----------------------------------------------------------


def stored_form(ds: pydicom.Dataset, signed: int, bits: int, offset: int) -> pydicom.Dataset:
    """Crop to the centre and re-store the 12-bit raw values in another form, same HU.

    ``stored = raw + offset`` in ``bits`` bits (two's complement when ``signed``); the
    intercept compensates, so HU = stored * slope + intercept is unchanged.
    """
    raw = ds.pixel_array.astype(np.int32)
    r0 = (raw.shape[0] - CROP) // 2
    c0 = (raw.shape[1] - CROP) // 2
    raw = raw[r0 : r0 + CROP, c0 : c0 + CROP]
    stored = raw + offset
    ds.Rows = ds.Columns = CROP
    ipp = [float(v) for v in ds.ImagePositionPatient]
    dy, dx = (float(v) for v in ds.PixelSpacing)
    ds.ImagePositionPatient = [ipp[0] + c0 * dx, ipp[1] + r0 * dy, ipp[2]]
    ds.PixelRepresentation = signed
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.RescaleIntercept = str(int(float(ds.RescaleIntercept)) - offset)
    ds.PixelData = stored.astype(np.int16 if signed else np.uint16).tobytes()
    for keyword in ("SmallestImagePixelValue", "LargestImagePixelValue", "WindowCenter",
                    "WindowWidth"):
        if keyword in ds:
            delattr(ds, keyword)
    return ds


def _run(cmd: list[str]) -> str | None:
    """Run an encoder; None on success, else its message."""
    if shutil.which(cmd[0]) is None:
        return f"{cmd[0]} not installed"
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        last = (proc.stderr or proc.stdout).strip().splitlines()[-1]
        return last.split(": encoding file:")[0][:160]
    return None


def encode(src: Path, dst: Path, syntax: str) -> str | None:
    """Write ``src`` (explicit VR LE) as ``dst`` in ``syntax``; None, or why no encoder can."""
    ds = pydicom.dcmread(src)
    arr = ds.pixel_array
    if syntax in (ImplicitVRLittleEndian, ExplicitVRLittleEndian, DeflatedExplicitVRLittleEndian):
        ds.file_meta.TransferSyntaxUID = syntax
    elif syntax == ExplicitVRBigEndian:
        # pydicom writes big endian when asked to explicitly; OW pixel data are bytes to it,
        # so they are swapped here.
        ds.file_meta.TransferSyntaxUID = syntax
        ds.PixelData = arr.astype(arr.dtype.newbyteorder(">")).tobytes()
        pydicom.dcmwrite(dst, ds, implicit_vr=False, little_endian=False,
                         enforce_file_format=True)
        return None
    elif syntax == RLELossless:
        ds.compress(RLELossless)
    elif syntax == JPEG2000Lossless:
        ds.compress(JPEG2000Lossless)
    elif syntax == JPEG2000:
        ds.compress(JPEG2000, j2k_cr=[10])
    elif syntax == HTJ2K_LOSSLESS:
        import imagecodecs

        try:
            frame = imagecodecs.htj2k_encode(arr)
        except Exception as exc:  # the encoder's own refusal, recorded in the table
            return f"imagecodecs htj2k_encode: {exc}"
        ds.PixelData = encapsulate([frame])
        ds["PixelData"].VR = "OB"
        ds.file_meta.TransferSyntaxUID = syntax
    else:
        args = {
            JPEGLS_LOSSLESS: ["dcmcjpls", "+el"],
            JPEGLS_NEAR: ["dcmcjpls", "+en"],
            JPEG_LOSSLESS_SV1: ["dcmcjpeg", "+e1"],
            JPEG_LOSSLESS_P14: ["dcmcjpeg", "+el"],
            JPEG_EXTENDED: ["dcmcjpeg", "+ee"],
            JPEG_BASELINE: ["dcmcjpeg", "+eb"],
        }[syntax]
        why = _run([*args, str(src), str(dst)])
        if why is None:
            written = str(pydicom.dcmread(dst, stop_before_pixels=True).file_meta
                          .TransferSyntaxUID)
            if written != syntax:
                dst.unlink()
                return f"{args[0]} wrote {UID(written).name} instead"
        return why
    ds.save_as(dst, enforce_file_format=True)
    return None


def shared_corpus(series_dir: Path, work: Path) -> list[Outcome]:
    """The real series in every stored form and syntax, loaded and compared."""
    files = sorted(series_dir.glob("*.dcm"))[:N_SLICES]
    out = []
    for form, signed, bits, offset in VARIANTS:
        plain = work / "plain" / form.replace(" ", "")
        plain.mkdir(parents=True)
        for f in files:
            stored_form(pydicom.dcmread(f), signed, bits, offset).save_as(
                plain / f.name, enforce_file_format=True)
        for syntax, encoder in SYNTAXES.items():
            name = UID(syntax).name
            folder = work / "enc" / form.replace(" ", "") / syntax
            folder.mkdir(parents=True)
            why = None
            for f in files:
                why = encode(plain / f.name, folder / f.name, syntax)
                if why:
                    break
            if why:
                out.append(Outcome(f"b40f via {encoder}", name, form, f"no encoder: {why}"))
                continue
            out.append(medscan_outcome(folder, f"b40f via {encoder}", name, form))
    return out


def run_corpus(shared_ct: Path | None) -> list[Outcome]:
    """Both parts of the corpus (the shared part only when ``shared_ct`` is given)."""
    with tempfile.TemporaryDirectory(prefix="medscan-corpus-") as tmp:
        work = Path(tmp)
        outcomes = pydicom_corpus(work)
        if shared_ct is not None:
            outcomes += shared_corpus(shared_ct / "lungdx-a0002-b40f", work)
    return outcomes


def markdown(outcomes: list[Outcome]) -> str:
    """The corpus as two markdown tables (bundled files; syntax x stored form)."""
    lines = ["| pydicom file | transfer syntax | stored | `load` (volume) "
             "| `decode_file` (pixels) |", "| --- | --- | --- | --- | --- |"]
    for o in outcomes:
        if not o.name.startswith("b40f"):
            lines.append(f"| `{o.name}` | {o.syntax} | {o.form} | {o.result} | {o.pixels} |")
    shared = [o for o in outcomes if o.name.startswith("b40f")]
    if shared:
        forms = [v[0] for v in VARIANTS]
        lines += ["", "| transfer syntax (encoder) | " + " | ".join(forms) + " |",
                  "| --- |" + " --- |" * len(forms)]
        for syntax, encoder in SYNTAXES.items():
            name = UID(syntax).name
            cells = [next(o.result for o in shared if o.syntax == name and o.form == f)
                     for f in forms]
            lines.append(f"| {name} ({encoder}) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    """Print the corpus tables (markdown)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[2]
                        / "shared" / "data" / "ct", help="the shared CT folder")
    args = parser.parse_args()
    shared = args.shared if args.shared.exists() else None
    print(markdown(run_corpus(shared)))


if __name__ == "__main__":
    main()
