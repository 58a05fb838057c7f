"""Where code runs: the device and the process group. One helper for each, used by every package.

The process group comes from the environment (torchrun, or submitit/SLURM through the grid launcher):
RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT; gloo on CPU, NCCL on CUDA. Without it
everything runs as a single process (rank 0 of 1) and the collectives below are identities.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from canbench.config import ConfigError

DEVICES = ("auto", "cpu", "cuda")  # what --device / train.device accept (plus cuda:N for --device)


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def rank_world() -> tuple[int, int]:
    """(rank, world size) of the initialised process group, (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_distributed() -> bool:
    """True when a process group with more than one rank is running (collectives are not identities)."""
    return rank_world()[1] > 1


def current() -> DistInfo:
    """Rank, world size and local rank of this process."""
    rank, world = rank_world()
    return DistInfo(rank, world, int(os.environ.get("LOCAL_RANK", 0)) if world > 1 else 0)


def init_from_env(device_type: str) -> DistInfo:
    """Initialise the default process group when the environment asks for more than one process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return current()
    if not (dist.is_available() and dist.is_initialized()):
        backend = "nccl" if device_type == "cuda" else "gloo"
        if device_type == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group(backend=backend, init_method="env://")
    return current()


def destroy() -> None:
    """Tear the process group down (a no-op without one)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean over ranks (identity on one process)."""
    if is_distributed():
        x = x.clone()
        dist.all_reduce(x)
        x /= dist.get_world_size()
    return x


def all_reduce_sum_(x: torch.Tensor) -> torch.Tensor:
    """In-place sum over ranks (identity on one process); returns ``x``."""
    if is_distributed():
        dist.all_reduce(x)
    return x


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def resolve_device(name: str | torch.device | None = "auto", key: str = "--device") -> torch.device:
    """``auto`` (or None) -> CUDA when available, else CPU; ``cuda`` -> this process's GPU (LOCAL_RANK);
    ``cuda:N`` / ``cpu`` as given. Asking for CUDA without a GPU is a ConfigError naming ``key``."""
    if name is None or name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError):
        raise ConfigError(f"{key}={name!r} is not a device (one of {', '.join(DEVICES)}, cuda:N)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"{key}={name!r} but no CUDA device is available (use {key}=cpu or auto)")
        if dev.index is None:
            dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    elif dev.type != "cpu":
        raise ConfigError(f"{key}={name!r} is not one of {', '.join(DEVICES)}, cuda:N")
    return dev


__all__ = ["DEVICES", "DistInfo", "all_reduce_mean", "all_reduce_sum_", "barrier", "current", "destroy",
           "init_from_env", "is_distributed", "rank_world", "resolve_device"]
