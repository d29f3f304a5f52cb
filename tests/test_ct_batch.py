"""Batch mechanics: shard selection, atomic case folders, hashing, index rebuild under a lock."""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
from pathlib import Path

import pytest

from medscan.batch import (
    atomic_case_dir,
    case_is_current,
    config_hash,
    hash_inputs,
    hash_series,
    rebuild_index,
    select_shard,
    shard_of,
)
from medscan.io import INDEX_COLUMNS, read_index


def test_select_shard_is_disjoint_covering_and_stable():
    ids = [f"ct-{i:010x}" for i in range(500)]
    parts = [select_shard(ids, s, 7) for s in range(7)]
    assert sorted(c for p in parts for c in p) == sorted(ids)
    assert sum(len(p) for p in parts) == len(ids)
    assert all(40 < len(p) < 110 for p in parts)  # roughly balanced
    # documented rule, independent of this implementation
    import hashlib

    c = ids[3]
    assert shard_of(c, 7) == int(hashlib.sha256(c.encode()).hexdigest()[:8], 16) % 7
    assert select_shard(ids, 0, 1) == ids
    with pytest.raises(ValueError):
        select_shard(ids, 7, 7)


def test_hashes(sample_ct, tmp_path):
    files = sorted(sample_ct.glob("*.dcm"))
    per_file, combined = hash_inputs(files, sample_ct)
    assert set(per_file) == {f.name for f in files}
    # the same bytes elsewhere give the same hashes (relative paths)
    copy = tmp_path / "copy"
    copy.mkdir()
    for f in files:
        (copy / f.name).write_bytes(f.read_bytes())
    assert hash_inputs(sorted(copy.glob("*.dcm")), copy)[1] == combined
    (copy / files[0].name).write_bytes(files[0].read_bytes() + b"\0")
    assert hash_inputs(sorted(copy.glob("*.dcm")), copy)[1] != combined
    # by series position: independent of folder names, sensitive to bytes and order
    inputs, by_slice = hash_series(files)
    assert [i["sha256"] for i in inputs] == [hashlib.sha256(f.read_bytes()).hexdigest()
                                             for f in files]
    renamed = tmp_path / "Lung_Dx-A0002"
    copy.rename(renamed)
    assert hash_series([renamed / f.name for f in files[1:]] + [files[0]])[1] != by_slice
    (renamed / files[0].name).write_bytes(files[0].read_bytes())
    assert hash_series([renamed / f.name for f in files])[1] == by_slice
    assert config_hash({"a": 1, "b": [1, 2]}) == config_hash({"b": [1, 2], "a": 1})
    assert config_hash({"a": 1}) != config_hash({"a": 2})


def _write_case(root: Path, case_id: str, status: str = "ok", input_hash: str = "i") -> None:
    with atomic_case_dir(root, case_id) as tmp:
        (tmp / "manifest.json").write_text(json.dumps(
            {"case_id": case_id, "status": status, "reason": "" if status == "ok" else "x",
             "input_hash": input_hash, "config_hash": "c", "seconds": 1.5}))
        (tmp / "metrics.json").write_text(json.dumps({"lung_volume_ml": 4000.0}))


def test_atomic_case_dir(tmp_path):
    _write_case(tmp_path, "ct-a")
    assert case_is_current(tmp_path / "ct-a", "i", "c")
    assert not case_is_current(tmp_path / "ct-a", "i", "other")
    # a failure inside leaves the old folder and no temporary folder
    with pytest.raises(RuntimeError), atomic_case_dir(tmp_path, "ct-a") as tmp:
        (tmp / "manifest.json").write_text("{}")
        raise RuntimeError("boom")
    assert json.loads((tmp_path / "ct-a" / "manifest.json").read_text())["status"] == "ok"
    assert [p.name for p in tmp_path.iterdir()] == ["ct-a"]
    # a failure never replaces an ok case of the same inputs ...
    _write_case(tmp_path, "ct-a", status="failed")
    assert json.loads((tmp_path / "ct-a" / "manifest.json").read_text())["status"] == "ok"
    # ... but replaces one of other inputs, and failed cases are redone
    _write_case(tmp_path, "ct-a", status="failed", input_hash="j")
    assert json.loads((tmp_path / "ct-a" / "manifest.json").read_text())["status"] == "failed"
    assert not case_is_current(tmp_path / "ct-a", "j", "c")
    assert [p.name for p in tmp_path.iterdir()] == ["ct-a"]  # no temp folder, no lease left


def _shard_writer(root: str, shard: int) -> None:
    for i in range(20):
        _write_case(Path(root), f"ct-{shard}-{i:02d}")
        rebuild_index(root)


def test_index_rebuild_from_concurrent_writers(tmp_path):
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_shard_writer, args=(str(tmp_path), s)) for s in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    assert all(p.exitcode == 0 for p in procs)
    rebuild_index(tmp_path)
    rows = read_index(tmp_path)
    assert len(rows) == 60
    assert list(rows[0]) == list(INDEX_COLUMNS)
    assert rows[0]["lung_volume_ml"] == "4000.00" and rows[0]["seconds"] == "1.50"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".index.csv")]


def test_case_missing_a_file_its_manifest_names_is_not_current(tmp_path):
    """A finished case whose mesh was deleted is redone by a rerun, not reported current."""
    with atomic_case_dir(tmp_path, "ct-m") as tmp:
        (tmp / "meshes").mkdir()
        (tmp / "meshes" / "bone.ply").write_bytes(b"ply\n")
        (tmp / "manifest.json").write_text(json.dumps(
            {"case_id": "ct-m", "status": "ok", "reason": "", "input_hash": "i",
             "config_hash": "c", "meshes": [{"tissue": "bone", "path": "meshes/bone.ply"}]}))
    assert case_is_current(tmp_path / "ct-m", "i", "c")
    (tmp_path / "ct-m" / "meshes" / "bone.ply").unlink()
    assert not case_is_current(tmp_path / "ct-m", "i", "c")
