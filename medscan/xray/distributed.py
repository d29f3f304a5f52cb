"""Process group and device of a training run (one process, torchrun, or Slurm/submitit).

:func:`setup_distributed` is the one place that turns launcher variables into a process group:
:func:`medscan.hpc.distributed_env` reads torchrun's ``RANK``/``WORLD_SIZE`` or exports them
from a submitit job or a plain ``srun`` step, then ``env://`` initialisation joins the group
(``nccl`` on GPU, ``gloo`` on CPU). The small collective helpers below are no-ops in a single
process, so the loop is written once for both cases.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from medscan.hpc import DistEnv, distributed_env


def pick_device(accelerator: str, local_rank: int = 0) -> torch.device:
    """``cpu``, ``gpu``/``cuda`` (error without one) or ``auto``; GPU ``local_rank`` of the node.

    Raises
    ------
    RuntimeError
        ``gpu``/``cuda`` asked for and torch sees no CUDA device.
    """
    if accelerator in ("gpu", "cuda"):
        if not torch.cuda.is_available():
            raise RuntimeError("trainer.accelerator=gpu but torch sees no CUDA device")
        return torch.device("cuda", local_rank)
    if accelerator == "auto" and torch.cuda.is_available():
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def setup_distributed(accelerator: str = "auto") -> tuple[torch.device, DistEnv]:
    """Join the process group the launcher describes and choose this process's device.

    Parameters
    ----------
    accelerator : {"auto", "cpu", "gpu", "cuda"}
        ``trainer.accelerator``.

    Returns
    -------
    device : torch.device
        ``cuda:<local rank>`` (made the current CUDA device) or ``cpu``.
    env : medscan.hpc.DistEnv
        Rank, world size and local rank (world size 1 when not distributed).
    """
    env = distributed_env(set_cuda_visible_devices=False)
    device = pick_device(accelerator, env.local_rank)
    if not env.enabled:
        return device, env
    import torch.distributed as dist

    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return device, env


def set_cpu_threads(requested: int | None, device: torch.device, env: DistEnv) -> None:
    """``torch.set_num_threads``: as requested, else the CPUs split between local CPU ranks."""
    threads = requested
    if threads is None and device.type == "cpu" and env.enabled:
        threads = max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    if threads:
        torch.set_num_threads(int(threads))


def gather(obj: Any, env: DistEnv) -> list[Any]:
    """``obj`` of every rank, in rank order (``[obj]`` in a single process)."""
    if not env.enabled:
        return [obj]
    import torch.distributed as dist

    out: list[Any] = [None] * env.world_size
    dist.all_gather_object(out, obj)
    return out


def any_rank(flag: bool, env: DistEnv) -> bool:
    """True on every rank when ``flag`` is true on any rank (e.g. a time budget ran out)."""
    if not env.enabled:
        return flag
    import torch.distributed as dist

    # NCCL reduces CUDA tensors only
    on = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
    tensor = torch.tensor([int(flag)], device=on)
    torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.MAX)
    return bool(tensor.item())


def from_main(obj: Any, env: DistEnv) -> Any:
    """Rank 0's value of ``obj`` on every rank."""
    if not env.enabled:
        return obj
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def barrier(env: DistEnv) -> None:
    """Wait for every rank (nothing in a single process)."""
    if env.enabled:
        torch.distributed.barrier()
