"""Conformance corpus (issue 11): every entry equals GDCM (or pydicom) or is refused by name.

The corpus is built and compared by ``tests/dicom_corpus.py`` (its table is in
``docs/dicom.md``): pydicom's bundled CT/MR-like files, and a real shared series re-encoded into
every transfer syntax an installed encoder writes, in four stored forms (unsigned / signed,
12 / 16 bits stored).
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("SimpleITK")
import dicom_corpus as corpus

#: Building and comparing the corpus takes about 20 s on a busy 2-core machine.
pytestmark = pytest.mark.slow

LOSSLESS_MATRIX = [
    "Implicit VR Little Endian",
    "Explicit VR Little Endian",
    "Explicit VR Big Endian",
    "Deflated Explicit VR Little Endian",
    "RLE Lossless",
    "JPEG 2000 Image Compression (Lossless Only)",
    "JPEG-LS Lossless Image Compression",
    "JPEG Lossless, Non-Hierarchical (Process 14)",
    "JPEG Lossless, Non-Hierarchical, First-Order Prediction (Process 14 [Selection Value 1])",
]


@pytest.fixture(scope="module")
def outcomes(shared_ct: Path) -> list[corpus.Outcome]:
    return corpus.run_corpus(shared_ct)


def test_no_wrong_value_anywhere(outcomes: list[corpus.Outcome]) -> None:
    wrong = [o for o in outcomes if not o.ok]
    assert not wrong, "\n".join(f"{o.name} {o.syntax} {o.form}: {o.result} / {o.pixels}"
                                for o in wrong)
    refused = [o for o in outcomes if o.result.startswith("refused")]
    assert all(len(o.result) > len("refused: ") + 10 for o in refused)  # a named reason


def test_lossless_matrix_equals_gdcm(outcomes: list[corpus.Outcome]) -> None:
    """Every lossless syntax x stored form of the real series loads and equals GDCM."""
    shared = {(o.syntax, o.form): o.result for o in outcomes if o.name.startswith("b40f")}
    missing = set()
    for syntax in LOSSLESS_MATRIX:
        for form, *_ in corpus.VARIANTS:
            result = shared[(syntax, form)]
            if result.startswith("no encoder") and result.endswith("not installed"):
                missing.add(result)  # dcmtk absent: its syntaxes are not tried
                continue
            assert result == "equal", (syntax, form, result)
    if missing:
        pytest.skip(f"encoders missing (apt install dcmtk): {sorted(missing)}")


def test_bundled_files_decode_or_are_refused_by_name(outcomes: list[corpus.Outcome]) -> None:
    bundled = {o.name: o for o in outcomes if not o.name.startswith("b40f")}
    assert set(corpus.PYDICOM_FILES) <= set(bundled)
    # CT volumes in pydicom's set load and equal GDCM
    for name in ("CT_small.dcm", "693_J2KI.dcm", "J2K_pixelrep_mismatch.dcm"):
        assert bundled[name].result == "equal", bundled[name]
    # the truncated file is refused at discovery, saying so
    assert bundled["MR_truncated.dcm"].result.startswith("refused: truncated")
    # every lossless MR encoding decodes to GDCM's values
    for name in ("MR_small.dcm", "MR_small_implicit.dcm", "MR_small_bigendian.dcm",
                 "MR_small_expb.dcm", "MR_small_RLE.dcm", "MR_small_jp2klossless.dcm",
                 "MR_small_jpeg_ls_lossless.dcm", "image_dfl.dcm", "examples_overlay.dcm"):
        assert bundled[name].pixels == "equal", bundled[name]


def test_pydicom_data_files_when_installed(outcomes: list[corpus.Outcome]) -> None:
    """pydicom-data (dev extra): CT/MR series and an Enhanced CT load and equal GDCM."""
    extra = {o.name: o for o in outcomes if o.name in corpus.PYDICOM_DATA_FILES}
    if not extra:
        pytest.skip("pydicom-data is not installed (pip install pydicom-data)")
    for name in ("693_UNCI.dcm", "693_J2KR.dcm", "MR2_UNCR.dcm", "MR2_J2KR.dcm",
                 "eCT_Supplemental.dcm"):
        assert extra[name].result == "equal", extra[name]
    for name in ("emri_small.dcm", "emri_small_RLE.dcm"):
        assert "per-frame functional group" in extra[name].result
        assert extra[name].pixels == "equal"
