"""`medscan train` on the real local Slurm: 2-process DDP (gloo) and a preempted run that resumes.

Tiny: the embedded 16 X-rays at 64 px, resnet18 from scratch, 4 steps per epoch.
"""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

pytest_plugins = ["slurm_cluster"]
pytestmark = [pytest.mark.slurm, pytest.mark.slow]

TINY = [
    "model=resnet18", "data.image_size=64", "data.batch_size=4", "data.num_workers=0",
    "data.val_fraction=0.25", "data.augment.enabled=false", "trainer=smoke",
    "trainer.scheduler=constant",
]  # fmt: skip


def _slurm_args(sweep: Path, *overrides: str) -> list[str]:
    return [
        sys.executable, "-m", "medscan.cli", "train", "-m",
        f"hydra.sweep.dir={sweep}",
        "hydra.launcher.partition=debug", "hydra.launcher.timeout_min=10",
        "hydra.launcher.mem_gb=2", "hydra.launcher.gpus_per_node=null",
        *TINY, *overrides,
    ]  # fmt: skip


def _epochs(out: Path) -> list[int]:
    with open(out / "metrics.csv") as fh:
        return [int(row["epoch"]) for row in csv.DictReader(fh)]


def test_ddp_training_on_two_slurm_tasks(slurm_cluster, sample_xray, tmp_path: Path) -> None:
    """hydra/launcher=slurm_ddp with 2 tasks of 1 CPU: one DDP run of world size 2."""
    out, sweep = tmp_path / "out", tmp_path / "sweep"
    args = _slurm_args(
        sweep, "hydra/launcher=slurm_ddp", "hydra.launcher.tasks_per_node=2",
        "hydra.launcher.cpus_per_task=1", f"data.root={sample_xray}", f"output={out}",
        "trainer.max_epochs=1", "data.batch_size=2", "trainer.devices=2",
    )  # fmt: skip
    proc = subprocess.run(
        args, capture_output=True, text=True, timeout=600, env=slurm_cluster.env
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["world_size"] == 2 and summary["rank"] == 0
    assert _epochs(out) == [0]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["best.pt", "last.pt"]
    logs = sorted((sweep / ".submitit").glob("*/*_log.out"))
    assert len(logs) == 2  # one log per Slurm task (rank)
    if slurm_cluster.accounting:
        job = logs[0].parent.name
        assert slurm_cluster.final_states(job) == {"COMPLETED"}


def test_preempted_training_requeues_and_resumes(slurm_cluster, sample_xray, tmp_path: Path):
    """Preempt a Slurm training after its first epoch: submitit requeues it, it resumes."""
    out, sweep = tmp_path / "out", tmp_path / "sweep"
    args = _slurm_args(
        sweep, "hydra/launcher=slurm", "hydra.launcher.cpus_per_task=2",
        "hydra.launcher.max_num_timeout=2", f"data.root={sample_xray}", f"output={out}",
        "trainer.max_epochs=4",
    )  # fmt: skip
    proc = subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=slurm_cluster.env
    )
    last = out / "checkpoints" / "last.pt"
    try:
        deadline = time.monotonic() + 300
        while not last.exists():
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            assert time.monotonic() < deadline, "no checkpoint after 300 s"
            time.sleep(0.1)
        while not list((sweep / ".submitit").glob("*/*_0_log.out")):
            time.sleep(0.1)
        job_dir = next((sweep / ".submitit").glob("*/*_0_log.out")).parent
        job = job_dir.name
        slurm_cluster.preempt(job)
        log, _ = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, log[-3000:]
    final = torch.load(last, weights_only=True)
    assert final["finished"] and final["epoch"] == 3
    assert _epochs(out) == list(range(4))  # every epoch once: resumed, not restarted
    job_log = next(job_dir.glob("*_0_log.out")).read_text()
    resumed = re.search(r"resumed from \S+ at epoch (\d+)", job_log)
    assert resumed, job_log[-3000:]  # the requeued run started from last.pt ...
    assert 1 <= int(resumed.group(1)) <= 3  # ... after the first epoch, not from scratch
    if slurm_cluster.accounting:
        assert slurm_cluster.final_states(job) == {"COMPLETED"}
        history = slurm_cluster.run("sacct", "-n", "-D", "-X", "-P", "-o", "State", "-j", job)
        assert "REQUEUED" in history.split()  # the same job ran twice


def test_plain_sbatch_srun_ddp_as_in_the_example(slurm_cluster, sample_xray, tmp_path: Path):
    """containers/slurm/train-4gpu.sbatch without the container: its exports + srun, 2 tasks."""
    example = Path(__file__).resolve().parents[1] / "containers" / "slurm" / "train-4gpu.sbatch"
    exports = [line for line in example.read_text().splitlines() if line.startswith("export ")]
    assert any("SUBMITIT_EXECUTOR=slurm" in line for line in exports)
    out = tmp_path / "out"
    train = " ".join(
        [sys.executable, "-m", "medscan.cli", "train", f"data.root={sample_xray}", f"output={out}",
         *TINY, "trainer.max_epochs=1", "data.batch_size=2"]
    )  # fmt: skip
    script = tmp_path / "train.sbatch"
    lines = [
        "#!/bin/bash", "#SBATCH --ntasks=2", "#SBATCH --cpus-per-task=1",
        f"#SBATCH --output={tmp_path}/slurm-%j.out", "set -euo pipefail", *exports,
        f"srun {train}", "",
    ]  # fmt: skip
    script.write_text("\n".join(lines))
    job = slurm_cluster.run("sbatch", "--parsable", str(script)).strip()
    slurm_cluster.wait_idle(600)
    log = (tmp_path / f"slurm-{job}.out").read_text()
    if slurm_cluster.accounting:
        assert slurm_cluster.final_states(job) == {"COMPLETED"}, log[-3000:]
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["world_size"] == 2 and summary["rank"] == 0, log[-3000:]
