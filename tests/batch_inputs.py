"""Deterministic batch inputs built from real series with pydicom (issue 19 faults 4, 5, 7).

One small generator per input; each writes new files and never touches its source.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import pydicom
from pydicom.uid import UID

#: UID root for generated UIDs (2.25 = UUID-derived, ISO/IEC 9834-8): deterministic, never real.
_UID_ROOT = "2.25."


def derived_uid(*parts: str) -> UID:
    """A deterministic UID under 2.25 derived from ``parts``."""
    digest = hashlib.sha256("\0".join(parts).encode()).hexdigest()
    return UID(_UID_ROOT + str(int(digest[:30], 16)))


def _rewrite(src: Path, dst_dir: Path, edit: Callable[[pydicom.Dataset], None],
             name: str | bytes | None = None) -> Path:
    ds = pydicom.dcmread(src)
    edit(ds)
    dst_dir.mkdir(parents=True, exist_ok=True)
    if name is None:
        out = dst_dir / src.name
    else:
        out = Path(os.fsdecode(os.path.join(os.fsencode(dst_dir), os.fsencode(name))))
    ds.save_as(out)
    return out


def series_copy(src_dir: Path, dst_dir: Path, tag: str) -> list[Path]:
    """Copy of the series in ``src_dir`` as a new series (new Series/SOPInstanceUIDs from
    ``tag``), pixels and geometry unchanged: a distinct case with the same expected metrics."""
    def edit(ds: pydicom.Dataset) -> None:
        ds.SeriesInstanceUID = derived_uid("series", tag, ds.SeriesInstanceUID)
        sop = derived_uid("sop", tag, ds.SOPInstanceUID)
        ds.SOPInstanceUID = sop
        ds.file_meta.MediaStorageSOPInstanceUID = sop

    return [_rewrite(f, dst_dir, edit) for f in sorted(src_dir.glob("*.dcm"))]


def series_copies(src_dir: Path, root: Path, n: int) -> list[Path]:
    """``n`` copies of one series under ``root/s<k>/``, each its own SeriesInstanceUID."""
    out = []
    for k in range(n):
        series_copy(src_dir, root / f"s{k}", f"copy-{k}")
        out.append(root / f"s{k}")
    return out


#: A SeriesDescription with path and shell characters, a name, and a byte that is not UTF-8.
HOSTILE_DESCRIPTION = b"../../etc/passwd; rm -rf ~ $(id) `uname` | DOE^JOHN \xff\xfe end"


def hostile_description(src_dir: Path, dst_dir: Path) -> list[Path]:
    """The series with :data:`HOSTILE_DESCRIPTION` (raw bytes, declared UTF-8) and a file name
    holding a non-UTF-8 byte."""
    def edit(ds: pydicom.Dataset) -> None:
        ds.SpecificCharacterSet = "ISO_IR 192"
        ds.SeriesDescription = "placeholder"
        ds[0x0008103E].value = HOSTILE_DESCRIPTION

    files = sorted(src_dir.glob("*.dcm"))
    out = [_rewrite(f, dst_dir, edit) for f in files[1:]]
    out.append(_rewrite(files[0], dst_dir, edit, name=b"01-\xe9t\xff;$(x).dcm"))
    return out


#: Identity planted by :func:`archive_tree` (all must stay out of every output).
ARCHIVE_PATIENT_ID = "MRN-4711-0815"
ARCHIVE_PATIENT_NAME = "MUSTERFRAU^ERIKA"
ARCHIVE_DESCRIPTION = "Thorax Erika Musterfrau follow-up"


def archive_tree(src_dir: Path, root: Path) -> Path:
    """The series under an archive-like tree ``root/<PatientID>_<Name>/<date>_CT/<description>/``
    with PatientName/ID and a name in SeriesDescription in the headers; returns the series
    folder."""
    folder = (root / f"{ARCHIVE_PATIENT_ID}_{ARCHIVE_PATIENT_NAME}" / "20190101_CT_Musterfrau"
              / ARCHIVE_DESCRIPTION.replace(" ", "_"))

    def edit(ds: pydicom.Dataset) -> None:
        ds.PatientID = ARCHIVE_PATIENT_ID
        ds.PatientName = ARCHIVE_PATIENT_NAME
        ds.SeriesDescription = ARCHIVE_DESCRIPTION
        ds.StudyDescription = f"CT {ARCHIVE_PATIENT_NAME}"

    files = sorted(src_dir.glob("*.dcm"))
    for f in files:
        _rewrite(f, folder, edit, name=f"{ARCHIVE_PATIENT_ID}-{f.name}")
    # a second copy of one instance (same SOPInstanceUID): the loader reports it in a finding
    # that lists both files, so qc.json must name them without their paths
    _rewrite(files[3], folder / "copy", edit,
             name=f"{ARCHIVE_PATIENT_ID}-copy.dcm")
    return folder
