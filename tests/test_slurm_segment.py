"""Sharded `medscan segment` as a Slurm job array through `hydra/launcher=slurm` (real Slurm).

Input tree: the three CC BY 4.0 chest series from ../shared/data/ct plus the embedded sample (the
same instances as lungdx-a0002-b40f, so the loader folds it into that series with a
`duplicate_instance` finding): 3 cases, spread over 4 shards (one shard is empty).
"""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from medscan.batch import select_shard
from medscan.dicom import discover

pytest_plugins = ["slurm_cluster"]
pytestmark = [pytest.mark.slurm, pytest.mark.slow]

CC_BY_SERIES = ["lungdx-a0001-chest-5mm", "lungdx-a0002-b40f", "lungdx-a0002-b70f"]
NUM_SHARDS = 4


@pytest.fixture(scope="module")
def ct_tree(shared_ct: Path, sample_ct: Path, tmp_path_factory) -> Path:
    tree = tmp_path_factory.mktemp("ct-tree") / "input"
    for name in CC_BY_SERIES:
        shutil.copytree(shared_ct / name, tree / name)
    shutil.copytree(sample_ct, tree / "embedded-sample")
    return tree


def _segment_array(tree: Path, out: Path, sweep: Path, env: dict[str, str]) -> None:
    args = [
        sys.executable, "-m", "medscan.cli", "segment", "-m",
        f"input={tree}", f"output={out}", "progress=false", "mesh_formats=[ply]",
        f"shard=range(0,{NUM_SHARDS})", f"num_shards={NUM_SHARDS}",
        "hydra/launcher=slurm", f"hydra.sweep.dir={sweep}",
        "hydra.launcher.partition=debug", "hydra.launcher.timeout_min=20",
        "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=4",
    ]  # fmt: skip
    proc = subprocess.run(args, capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]


def _index(out: Path) -> list[dict[str, str]]:
    with open(out / "index.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def _array_job(sweep: Path) -> str:
    jobs = {p.name.split("_")[0] for p in (sweep / ".submitit").glob("[0-9]*")}
    assert len(jobs) == 1, jobs  # one array job, not one job per shard
    return jobs.pop()


@pytest.fixture(scope="module")
def sharded_run(slurm_cluster, ct_tree: Path, tmp_path_factory) -> tuple[Path, Path, list[str]]:
    expected = sorted(s.case_id for s in discover(ct_tree).series)
    base = tmp_path_factory.mktemp("segment")
    out, sweep = base / "out", base / "sweep"
    _segment_array(ct_tree, out, sweep, slurm_cluster.env)
    return out, sweep, expected


def test_shards_merge_into_one_index(slurm_cluster, sharded_run) -> None:
    out, sweep, expected = sharded_run
    assert len(expected) == 3
    rows = _index(out)
    assert sorted(r["case_id"] for r in rows) == expected  # every case, exactly once
    assert {r["status"] for r in rows} == {"ok"}, rows
    for case in expected:
        manifest = json.loads((out / case / "manifest.json").read_text())
        assert manifest["status"] == "ok"
        assert (out / case / "labels.nii.gz").is_file()
    assert not list(out.glob(".tmp-*"))  # no half-written case folders
    # The shards really split the cases: each shard's hydra config names its shard, and
    # the job array ran one task per shard.
    job = _array_job(sweep)
    if slurm_cluster.accounting:
        assert slurm_cluster.final_states(job) == {"COMPLETED"}
    tasks = slurm_cluster.run("sacct", "-n", "-X", "-P", "-o", "JobID,Elapsed", "-j", job)
    elapsed = dict(line.split("|") for line in tasks.splitlines() if line)
    assert len(elapsed) == NUM_SHARDS
    owners = {k: select_shard(expected, k, NUM_SHARDS) for k in range(NUM_SHARDS)}
    seconds = {r["case_id"]: float(r["seconds"]) for r in rows}
    for task, took in sorted(elapsed.items()):
        shard = int(task.split("_")[1])
        cases = owners[shard]
        print(f"shard {shard}: {len(cases)} case(s), Slurm elapsed {took}, "
              f"case seconds {[round(seconds[c], 1) for c in cases]}")  # fmt: skip


def test_rerun_after_failed_shards_redoes_only_missing(slurm_cluster, sharded_run, ct_tree):
    out, sweep, expected = sharded_run
    lost, failed, kept = expected
    shutil.rmtree(out / lost)  # a shard that died before writing its case
    manifest = json.loads((out / failed / "manifest.json").read_text())
    manifest.update(status="failed", reason="node crashed (simulated)")
    (out / failed / "manifest.json").write_text(json.dumps(manifest))
    kept_stamp = (out / kept / "manifest.json").stat().st_mtime_ns
    kept_created = json.loads((out / kept / "manifest.json").read_text())["created"]

    _segment_array(ct_tree, out, sweep.with_name("sweep-rerun"), slurm_cluster.env)

    rows = _index(out)
    assert sorted(r["case_id"] for r in rows) == expected
    assert {r["status"] for r in rows} == {"ok"}
    assert (out / lost / "manifest.json").is_file()  # redone
    assert json.loads((out / failed / "manifest.json").read_text())["status"] == "ok"  # redone
    assert (out / kept / "manifest.json").stat().st_mtime_ns == kept_stamp  # skipped
    assert json.loads((out / kept / "manifest.json").read_text())["created"] == kept_created
