"""Helpers for running medscan jobs on clusters (Slurm through submitit, torchrun).

Nothing here imports submitit or torch at module import time: a laptop install without the
``hpc`` extra can import :mod:`medscan.hpc`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits in a distributed run.

    Attributes
    ----------
    rank, world_size, local_rank : int
        Global rank, number of processes, rank on this node.
    master_addr : str
        Host of rank 0.
    master_port : int
        TCP port of the rendezvous on ``master_addr``.
    launcher : str
        ``"torchrun"``, ``"submitit"``, ``"srun"`` or ``"single"``.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    master_addr: str = "127.0.0.1"
    master_port: int = 29500
    launcher: str = "single"

    @property
    def is_main(self) -> bool:
        """True on rank 0 (the only rank that writes checkpoints and metrics)."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        """Whether there are several processes (a process group is needed)."""
        return self.world_size > 1


def _submitit_num_tasks() -> int:
    if not os.environ.get("SUBMITIT_EXECUTOR"):  # set in every job that submitit starts
        return 1
    try:
        import submitit
    except ImportError:
        return 1
    try:
        return int(submitit.JobEnvironment().num_tasks)
    except RuntimeError:  # not inside a submitit job after all
        return 1


def _srun_num_tasks() -> int:
    """Tasks of a plain ``srun`` step (``SLURM_PROCID`` is only set inside a step)."""
    if "SLURM_PROCID" not in os.environ:
        return 1
    return int(os.environ.get("SLURM_NTASKS", "1"))


def distributed_env(*, set_cuda_visible_devices: bool = True) -> DistEnv:
    """Describe (and, under submitit, export) the torch.distributed ``env://`` variables.

    - Under ``torchrun`` (``RANK`` and ``WORLD_SIZE`` set) the environment is read as is.
    - Inside a submitit job with several tasks (``hydra/launcher=slurm_ddp`` or ``local`` with
      ``tasks_per_node>1``), :class:`submitit.helpers.TorchDistributedEnvironment` exports
      ``MASTER_ADDR``, ``MASTER_PORT``, ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
      ``LOCAL_WORLD_SIZE`` (and, with ``set_cuda_visible_devices``, one GPU per task).
    - In a plain ``srun`` step with several tasks (an sbatch script), the same, after setting
      ``SUBMITIT_EXECUTOR=slurm`` (submitit only recognises its own jobs without it).
    - Otherwise a single process: rank 0 of 1.

    Call it before ``torch.distributed.init_process_group(init_method="env://")``; the X-ray
    training does so in :func:`medscan.xray.distributed.setup_distributed`. Variables already set
    (e.g. a ``MASTER_PORT`` of the site) are overwritten by the exported ones.

    Parameters
    ----------
    set_cuda_visible_devices : bool
        Under submitit, restrict each task to the GPU matching its local rank.

    Returns
    -------
    DistEnv
    """
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return DistEnv(
            rank=int(env["RANK"]),
            world_size=int(env["WORLD_SIZE"]),
            local_rank=int(env.get("LOCAL_RANK", 0)),
            master_addr=env.get("MASTER_ADDR", "127.0.0.1"),
            master_port=int(env.get("MASTER_PORT", 29500)),
            launcher="torchrun",
        )
    launcher = "submitit"
    if _submitit_num_tasks() <= 1:
        if _srun_num_tasks() <= 1:
            return DistEnv()
        os.environ.setdefault("SUBMITIT_EXECUTOR", "slurm")
        launcher = "srun"
    from submitit.helpers import TorchDistributedEnvironment

    dist = TorchDistributedEnvironment().export(
        set_cuda_visible_devices=set_cuda_visible_devices, overwrite=True
    )
    return DistEnv(
        rank=dist.rank,
        world_size=dist.world_size,
        local_rank=dist.local_rank,
        master_addr=dist.master_addr,
        master_port=dist.master_port,
        launcher=launcher,
    )


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask, else every CPU).

    The affinity mask holds e.g. the cores of a Slurm allocation (``cpus_per_task``) or of
    ``taskset``. The parallel paths of a segment job (two decoder processes, the mesh
    worker) follow it.
    """
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1
