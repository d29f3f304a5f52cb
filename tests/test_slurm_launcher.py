"""The shipped launcher presets on a real local Slurm: job arrays, sacct states, preemption.

A tiny Hydra app (written to a temp dir) stands in for a medscan job so that these tests check
the launcher configs and the cluster itself; the segment/train jobs have their own Slurm tests.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module

pytest_plugins = ["slurm_cluster"]

TOY_APP = '''
import json, os, time
from pathlib import Path

import hydra
from hydra.core.config_store import ConfigStore

ConfigStore.instance().store(name="toy", node={"x": 0, "steps": 2, "step_s": 0.0, "out": "???"})


@hydra.main(config_path=None, config_name="toy", version_base="1.3")
def main(cfg):
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    state = out / f"state-{cfg.x}.json"
    step = json.loads(state.read_text())["step"] if state.exists() else 0
    with open(out / f"starts-{cfg.x}.log", "a") as log:  # one line per (re)start
        env = os.environ
        log.write(f"{step} {env.get('SLURM_JOB_ID')} {env.get('SLURM_ARRAY_TASK_ID')}\\n")
    while step < cfg.steps:  # a "training" that checkpoints after every step
        time.sleep(cfg.step_s)
        step += 1
        tmp = state.with_suffix(".tmp")
        tmp.write_text(json.dumps({"step": step}))
        os.replace(tmp, state)
    (out / f"result-{cfg.x}.json").write_text(json.dumps({
        "x": cfg.x, "job": env.get("SLURM_JOB_ID"), "cpus": env.get("OMP_NUM_THREADS"),
    }))


if __name__ == "__main__":
    main()
'''


def _toy(tmp_path: Path) -> Path:
    app = tmp_path / "toy_app.py"
    app.write_text(TOY_APP)
    return app


def _launch_args(app: Path, sweep: Path, *overrides: str) -> list[str]:
    return [
        sys.executable, str(app), "-m",
        "hydra.searchpath=[pkg://medscan_conf]",  # where the medscan presets live
        "hydra/launcher=slurm",
        f"hydra.sweep.dir={sweep}",
        "hydra.launcher.partition=debug",
        "hydra.launcher.timeout_min=5",
        "hydra.launcher.cpus_per_task=1",
        "hydra.launcher.mem_gb=1",
        *overrides,
    ]  # fmt: skip


@pytest.mark.parametrize("preset", ["slurm", "slurm_ddp", "local"])
def test_presets_compose_and_override(preset: str) -> None:
    with initialize_config_module("medscan_conf", version_base="1.3"):
        cfg = compose(
            overrides=[f"hydra/launcher={preset}", "hydra.launcher.timeout_min=7"],
            return_hydra_config=True,
        )
    launcher = cfg.hydra.launcher
    assert launcher.timeout_min == 7
    kind = "Local" if preset == "local" else "Slurm"
    assert launcher._target_.endswith(f"{kind}Launcher")
    if preset != "local":
        assert launcher.max_num_timeout >= 1  # jobs checkpoint and requeue
        assert any("OMP_NUM_THREADS=$(( SLURM_CPUS_PER_TASK" in line for line in launcher.setup)
    if preset == "slurm_ddp":
        assert launcher.tasks_per_node == launcher.gpus_per_node == 4


def test_local_preset_runs_the_same_code_path(tmp_path: Path) -> None:
    """hydra/launcher=local: submitit processes on this machine, no cluster."""
    app, out, sweep = _toy(tmp_path), tmp_path / "out", tmp_path / "sweep"
    args = [sys.executable, str(app), "-m", "hydra.searchpath=[pkg://medscan_conf]",
            "hydra/launcher=local", f"hydra.sweep.dir={sweep}", f"out={out}", "x=1,2",
            "hydra.launcher.timeout_min=5"]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    env["OMP_NUM_THREADS"] = "1"
    proc = subprocess.run(args, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for x in (1, 2):
        assert json.loads((out / f"state-{x}.json").read_text())["step"] == 2
    assert len(list((sweep / ".submitit").glob("*/*_log.out"))) == 2  # two submitit jobs


@pytest.mark.slurm
def test_cluster_accounting_works(slurm_cluster, tmp_path: Path) -> None:
    job = slurm_cluster.run(
        "sbatch", "--parsable", f"--output={tmp_path}/slurm-%j.out", "--wrap", "hostname"
    ).strip()
    slurm_cluster.wait_idle(60)
    if slurm_cluster.accounting:
        assert slurm_cluster.final_states(job) == {"COMPLETED"}


@pytest.mark.slurm
def test_hydra_multirun_is_a_slurm_array(slurm_cluster, tmp_path: Path) -> None:
    app, out, sweep = _toy(tmp_path), tmp_path / "out", tmp_path / "sweep"
    proc = subprocess.run(
        _launch_args(app, sweep, f"out={out}", "x=1,2,3"),
        capture_output=True, text=True, timeout=300, env=slurm_cluster.env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = [json.loads((out / f"result-{x}.json").read_text()) for x in (1, 2, 3)]
    jobs = {r["job"] for r in results}
    assert len(jobs) == 3 and all(jobs)  # three Slurm jobs ...
    assert {r["cpus"] for r in results} == {"1"}  # ... that ran the preset's setup lines
    array_ids = {(out / f"starts-{x}.log").read_text().split()[2] for x in (1, 2, 3)}
    assert array_ids == {"0", "1", "2"}  # ... as one job array
    assert "Bypassing sacct error" not in proc.stderr  # accounting answers submitit's polls
    if slurm_cluster.accounting:
        for job in jobs:
            assert slurm_cluster.final_states(job) == {"COMPLETED"}


@pytest.mark.slurm
@pytest.mark.slow
def test_preempted_job_is_requeued_and_resumes(slurm_cluster, tmp_path: Path) -> None:
    """Preemption signal -> the launcher's checkpoint() -> requeue -> the app resumes."""
    app, out, sweep = _toy(tmp_path), tmp_path / "out", tmp_path / "sweep"
    args = _launch_args(
        app, sweep, f"out={out}", "x=7", "steps=12", "step_s=0.5",
        "hydra.launcher.max_num_timeout=2",
    )  # fmt: skip
    proc = subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=slurm_cluster.env
    )
    try:
        state = out / "state-7.json"
        deadline = time.monotonic() + 120
        while not (state.exists() and json.loads(state.read_text())["step"] >= 3):
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            assert time.monotonic() < deadline, "the job never reached step 3"
            time.sleep(0.2)
        job = (out / "starts-7.log").read_text().split()[1]
        slurm_cluster.preempt(job)
        log, _ = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, log[-3000:]
    starts = [line.split() for line in (out / "starts-7.log").read_text().splitlines()]
    assert len(starts) == 2, starts  # started, preempted, started again ...
    assert starts[1][1] == job  # ... as the same (requeued) Slurm job
    assert int(starts[1][0]) >= 3  # ... and resumed from its checkpoint, not from step 0
    assert json.loads(state.read_text())["step"] == 12
    if slurm_cluster.accounting:
        assert slurm_cluster.final_states(job) == {"COMPLETED"}


def test_distributed_env_outside_any_launcher(monkeypatch) -> None:
    from medscan.hpc import distributed_env

    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_PROCID", "SUBMITIT_EXECUTOR"):
        monkeypatch.delenv(var, raising=False)
    env = distributed_env()
    assert (env.rank, env.world_size, env.launcher, env.is_main) == (0, 1, "single", True)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    env = distributed_env()
    assert (env.rank, env.world_size, env.launcher, env.is_main) == (1, 2, "torchrun", False)


@pytest.mark.slurm
def test_distributed_env_in_a_two_task_slurm_step(slurm_cluster) -> None:
    """A plain `srun -n2` (as in containers/slurm/train-4gpu.sbatch), no submitit job."""
    code = (
        "import os; from medscan.hpc import distributed_env; e = distributed_env(); "
        "print(e.rank, e.world_size, e.local_rank, e.launcher, e.master_addr, e.master_port, "
        "os.environ['RANK'], os.environ['WORLD_SIZE'])"
    )
    out = slurm_cluster.run("srun", "-n2", "--cpus-per-task=1", sys.executable, "-c", code)
    rows = sorted(line.split() for line in out.splitlines() if line.strip())
    assert [r[:4] for r in rows] == [["0", "2", "0", "srun"], ["1", "2", "1", "srun"]]
    assert rows[0][4:6] == rows[1][4:6]  # one rendezvous address and port for both ranks
    assert [r[6:] for r in rows] == [["0", "2"], ["1", "2"]]  # exported for env://
