"""`medscan inspect` output and pseudonymous identity."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pydicom
import pytest

from medscan.cli import main as cli_main
from medscan.dicom import discover


def identity_values(folder: Path) -> set[str]:
    """The real PatientName / PatientID / birth date values found in the files."""
    values = set()
    for f in folder.rglob("*.dcm"):
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        for key in ("PatientName", "PatientID", "PatientBirthDate"):
            value = str(ds.get(key, "") or "").strip()
            if len(value) >= 4:
                values.add(value)
    return values


def run_inspect(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = cli_main(["inspect", *args])
    return code, capsys.readouterr().out


def test_inspect_json_on_shared_ct(shared_ct: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run_inspect(capsys, str(shared_ct), "--json")
    assert code == 0
    data = json.loads(out)
    assert set(data) >= {"series", "skipped", "other_series"}
    series = data["series"]
    assert sorted(s["n_slices"] for s in series) == [30, 30, 64, 255]
    for s in series:
        assert {"case_id", "patient_id", "modality", "n_slices", "shape", "spacing",
                "transfer_syntax", "findings"} <= set(s)
        assert s["modality"] == "CT" and s["shape"][0] == s["n_slices"]
    syntaxes = {s["transfer_syntax"] for s in series}
    assert any("JPEG Lossless" in t for t in syntaxes)
    assert {Path(k["path"]).name for k in data["skipped"]} == {"PROVENANCE.md"}
    secrets = identity_values(shared_ct)
    assert secrets  # the files do carry identifiers (TCIA pseudonyms): they must not leak
    for value in secrets:
        assert value not in out, "patient identifier leaked into inspect --json"
    # Pseudonymous ids: 3 patients (a0002's two kernels are one patient).
    assert len({s["patient_id"] for s in series}) == 3


def test_inspect_table_and_missing_path(
    sample_ct: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = run_inspect(capsys, str(sample_ct))
    assert code == 0
    case_id = discover(sample_ct).series[0].case_id
    assert case_id[:8] in out and "30" in out
    for value in identity_values(sample_ct):
        assert value not in out
    code, _ = run_inspect(capsys, str(tmp_path / "missing"))
    assert code == 2


def _copy_with(src: Path, dst: Path, n: int, **tags: str | None) -> None:
    dst.mkdir(parents=True)
    uid = pydicom.uid.generate_uid()
    for f in sorted(src.glob("*.dcm"))[:n]:
        ds = pydicom.dcmread(f)
        ds.SeriesInstanceUID = uid
        ds.SOPInstanceUID = pydicom.uid.generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        for key, value in tags.items():
            if value is None:
                if key in ds:
                    delattr(ds, key)
            else:
                setattr(ds, key, value)
        ds.save_as(dst / f.name)


def test_patient_identity_without_patient_id(sample_ct: Path, tmp_path: Path) -> None:
    common = {"PatientID": None, "PatientName": "DOE^JANE"}
    _copy_with(sample_ct, tmp_path / "a", 3, PatientBirthDate="19600101", **common)
    _copy_with(sample_ct, tmp_path / "b", 3, PatientBirthDate="19600101", **common)
    _copy_with(sample_ct, tmp_path / "c", 3, PatientBirthDate="19700101", **common)
    _copy_with(
        sample_ct, tmp_path / "d", 3, PatientBirthDate=None, PatientAge="063Y", PatientSex="F",
        **common,
    )
    _copy_with(
        sample_ct, tmp_path / "e", 3, PatientBirthDate=None, PatientAge="063Y", PatientSex="F",
        **common,
    )
    found = discover(tmp_path)
    by_dir = {s.files[0].parent.name: s for s in found.series}
    assert by_dir["a"].patient_id == by_dir["b"].patient_id  # name + birth date
    assert by_dir["a"].patient_id != by_dir["c"].patient_id
    assert by_dir["d"].patient_id == by_dir["e"].patient_id  # name + age + sex
    assert by_dir["d"].patient_id != by_dir["a"].patient_id
    assert len({s.case_id for s in found.series}) == 5
    # Another salt gives other, equally stable ids.
    salted = discover(tmp_path, salt="site-42-project-secret")
    assert {s.case_id for s in salted.series}.isdisjoint({s.case_id for s in found.series})
    assert [s.case_id for s in discover(tmp_path, salt="site-42-project-secret").series] == [
        s.case_id for s in salted.series
    ]


def test_ids_are_path_safe_and_stable(sample_ct: Path, tmp_path: Path) -> None:
    shutil.copytree(sample_ct, tmp_path / "elsewhere")
    a = discover(sample_ct).series[0]
    b = discover(tmp_path / "elsewhere").series[0]
    assert a.case_id == b.case_id and a.patient_id == b.patient_id
    assert a.case_id.replace("-", "").isalnum()


def test_volume_metadata_and_findings_carry_no_identity(shared_ct: Path) -> None:
    from medscan.dicom import load

    folder = shared_ct / "lungdx-a0001-chest-5mm"
    secrets = identity_values(folder)
    assert secrets
    series = discover(folder).series[0]
    vol = load(series)
    blob = json.dumps(
        {
            "metadata": vol.metadata,
            "findings": [f.to_dict() for f in vol.findings],
            "series": series.to_dict(),
            "ids": [vol.case_id, vol.patient_id],
        }
    )
    for value in secrets:
        assert value not in blob


def test_hidden_folders_and_files_are_walked(sample_ct: Path, tmp_path: Path) -> None:
    """A series under a hidden folder, and a hidden slice file, are loaded like any other."""
    shutil.copytree(sample_ct, tmp_path / "in" / ".archive" / "series")
    one = tmp_path / "one"
    shutil.copytree(sample_ct, one)
    first = sorted(one.glob("*.dcm"))[0]
    first.rename(one / ("." + first.name))
    for root in (tmp_path / "in", one):
        found = discover(root)
        assert [s.n_slices for s in found.series] == [30], root.name
        assert found.skipped == []


def test_inspect_says_refused_where_segment_refuses(
    sample_ct: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Breaker defect 10: a series with a blocking error is not "loaded yes"."""
    import dicom_faults as faults

    from medscan.dicom import SeriesError, load

    bad = tmp_path / "bad"
    shutil.copytree(sample_ct, bad)
    faults.inplane_shift(bad, 12, 40.0)
    good = tmp_path / "good"
    shutil.copytree(sample_ct, good)
    rows = {}
    for root in (bad, good):
        _code, out = run_inspect(capsys, str(root), "--tsv")
        header, row = out.strip().splitlines()[:2]
        rows[root.name] = dict(zip(header.split("\t"), row.split("\t"), strict=True))["loaded"]
    assert rows == {"bad": "refused (position_outlier)", "good": "yes"}
    with pytest.raises(SeriesError, match="position_outlier"):
        load(discover(bad).series[0])
