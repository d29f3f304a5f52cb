"""Pseudonymous case and patient ids (salted hashes; raw identity never leaves this module).

* ``case_id`` = ``<modality>-`` + 10 hex digits of ``sha256(salt | SeriesInstanceUID [| #split])``.
* ``patient_id`` = ``pt-`` + 10 hex digits of ``sha256(salt | patient key)`` where the key is the
  PatientID when present, else PatientName + PatientBirthDate, else PatientName + PatientAge +
  PatientSex, else (nothing identifies the patient) the StudyInstanceUID, so unrelated studies are
  never merged.

The salt defaults to :data:`DEFAULT_SALT` (a fixed project constant, so ids are stable across runs
and machines); set ``MEDSCAN_ID_SALT`` or pass ``salt=`` to make ids unlinkable to other sites.
"""

from __future__ import annotations

import hashlib
import os
import re

from pydicom.dataset import Dataset

#: Project-wide default salt. Changing it changes every id.
DEFAULT_SALT = "medscan-pseudonym-v1"

_SAFE = re.compile(r"[^a-z0-9]+")


def resolve_salt(salt: str | None = None) -> str:
    """Return ``salt``, else ``$MEDSCAN_ID_SALT``, else :data:`DEFAULT_SALT`."""
    if salt is not None:
        return salt
    return os.environ.get("MEDSCAN_ID_SALT") or DEFAULT_SALT


def pseudonym(prefix: str, value: str, salt: str | None = None, digits: int = 10) -> str:
    """Salted, path-safe pseudonym ``<prefix>-<hex>``.

    Parameters
    ----------
    prefix : str
        Readable prefix, e.g. ``"ct"`` or ``"pt"`` (lower-cased, non-alphanumerics dropped).
    value : str
        The identifying value (never returned or logged).
    salt : str, optional
        See :func:`resolve_salt`.
    digits : int
        Number of hex digits kept.

    Returns
    -------
    str
        For example ``"ct-3f9a1c2b7e"``.
    """
    digest = hashlib.sha256(f"{resolve_salt(salt)}\x00{value}".encode()).hexdigest()
    safe = _SAFE.sub("", prefix.lower()) or "x"
    return f"{safe}-{digest[:digits]}"


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword, None)
    if value is None:
        return ""
    return str(value).strip().upper()


def patient_key(ds: Dataset) -> str:
    """Identity key of the patient of ``ds`` (raw: hash it, never print it).

    Parameters
    ----------
    ds : pydicom.dataset.Dataset
        A header.

    Returns
    -------
    str
        ``"id:<PatientID>"``, ``"nb:<name>|<birth date>"``, ``"nas:<name>|<age>|<sex>"``, or
        ``"study:<StudyInstanceUID>"`` when nothing identifies the patient.
    """
    pid = _text(ds, "PatientID")
    if pid:
        return f"id:{pid}"
    name = _text(ds, "PatientName")
    birth = _text(ds, "PatientBirthDate")
    if name and birth:
        return f"nb:{name}|{birth}"
    age, sex = _text(ds, "PatientAge"), _text(ds, "PatientSex")
    if name and (age or sex):
        return f"nas:{name}|{age}|{sex}"
    return f"study:{_text(ds, 'StudyInstanceUID')}"


def patient_pseudonym(ds: Dataset, salt: str | None = None) -> str:
    """Pseudonymous patient id ``pt-<hex>`` of the patient in ``ds``."""
    return pseudonym("pt", patient_key(ds), salt)


def case_pseudonym(modality: str, series_uid: str, split: int, salt: str | None = None) -> str:
    """Pseudonymous case id of one (geometry-split) series.

    Parameters
    ----------
    modality : str
        DICOM Modality, used as the readable prefix (``"CT"`` -> ``"ct-..."``).
    series_uid : str
        SeriesInstanceUID.
    split : int
        Geometry-split index (0 for the main, largest group).
    salt : str, optional
        See :func:`resolve_salt`.
    """
    value = series_uid if split == 0 else f"{series_uid}#{split}"
    return pseudonym(modality or "x", value, salt)
