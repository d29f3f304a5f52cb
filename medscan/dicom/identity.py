"""Pseudonymous case and patient ids: HMAC-SHA256 under a secret key (raw identity stays here).

* ``case_id`` = ``<modality>-`` + 10 hex digits of ``HMAC(key, "case" | SeriesInstanceUID
  [| #split])``.
* ``patient_id`` = ``pt-`` + 10 hex digits of ``HMAC(key, "patient" | patient key)`` where the
  key is the PatientID when present, else PatientName + PatientBirthDate, else PatientName +
  PatientAge + PatientSex, else (nothing identifies the patient) the StudyInstanceUID, so
  unrelated studies are never merged.

The key (see :func:`resolve_secret`, in :mod:`medscan.secret`) is, first found wins:

1. the ``salt=`` argument (the jobs' ``salt=`` option, the ``--salt`` of ``inspect``): it *is*
   the key, not an addition to it, so it must be a secret of at least 16 bytes like the others;
2. ``$MEDSCAN_ID_SECRET`` (a shared project secret: every shard and rerun gets the same ids);
   ``$MEDSCAN_ID_SALT`` is read as the same thing (its old name);
3. the secret file ``$MEDSCAN_ID_SECRET_FILE``, else ``$XDG_CONFIG_HOME/medscan/id-secret``
   (``~/.config/medscan/id-secret``): 32 random bytes (hex) made on first use, mode 0600.
   The file holds the key as text (medscan writes 64 hex characters; ``openssl rand -hex 32``;
   surrounding whitespace is ignored) or as raw bytes (``head -c 32 /dev/urandom``; content
   that is not ASCII text is the key as it is, byte for byte), see :func:`key_from_file`.

Every source must give at least :data:`MIN_SECRET_BYTES` (16) bytes, else
:class:`SecretError` (one line, exit 2 in every command). There is no public default: with a
fixed, published salt a structured PatientID (``Lung_Dx-A0001``, a hospital MRN) was
recovered from its id by enumeration (about 80,000 guesses per second). With an unknown
256-bit key, an id tells nothing about the identifier without the key; HMAC (RFC 2104) rather than
``sha256(salt | value)`` because it is the standard keyed construction. What ids do not
protect against is written in ``docs/reliability.md`` ("Pseudonymous ids").

:func:`secret_fingerprint` is a one-way digest of the key, recorded in manifests so that two
outputs can be checked for having been made with the same key; it never reveals the key.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from typing import TYPE_CHECKING

from medscan.secret import (  # noqa: F401  (re-exported: the secret's API lives in medscan.secret)
    LEGACY_SALT_ENV,
    MIN_SECRET_BYTES,
    SECRET_BYTES,
    SECRET_ENV,
    SECRET_FILE_ENV,
    SecretError,
    fingerprint_of,
    key_from_file,
    mute_permission_warning,
    resolve_secret,
    secret_file,
    secret_fingerprint,
)

if TYPE_CHECKING:  # only annotations: the secret and the pseudonyms need no pydicom
    from pydicom.dataset import Dataset

_SAFE = re.compile(r"[^a-z0-9]+")


def pseudonym(prefix: str, value: str, salt: str | None = None, digits: int = 10,
              domain: str = "") -> str:
    """Keyed, path-safe pseudonym ``<prefix>-<hex>``.

    Parameters
    ----------
    prefix : str
        Readable prefix, e.g. ``"ct"`` or ``"pt"`` (lower-cased, non-alphanumerics dropped).
    value : str
        The identifying value (never returned or logged).
    salt : str, optional
        Explicit secret, see :func:`resolve_secret`.
    digits : int
        Number of hex digits kept (10: 40 bits, collisions unlikely below ~10^5 ids).
    domain : str
        Separates kinds of ids (a patient key never gives the same digest as a series UID).

    Returns
    -------
    str
        For example ``"ct-3f9a1c2b7e"``.
    """
    message = f"{domain}\x00{value}".encode("utf-8", "surrogateescape")
    digest = hmac.new(resolve_secret(salt), message, hashlib.sha256).hexdigest()
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
    return pseudonym("pt", patient_key(ds), salt, domain="patient")


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
        Explicit secret, see :func:`resolve_secret`.
    """
    value = series_uid if split == 0 else f"{series_uid}#{split}"
    return pseudonym(modality or "x", value, salt, domain="case")
