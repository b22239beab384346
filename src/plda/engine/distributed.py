"""Process-group set-up from torchrun's environment, and the few collectives the engine uses.

Launch: ``torchrun --nproc_per_node=N -m plda ...`` (multi-node through torchrun's own
rendezvous). Each process uses device ``cuda:LOCAL_RANK`` (never ``RANK``, which is global) or
the CPU; the backend is NCCL with CUDA and gloo without. Without torchrun's variables everything
falls back to a single process and every collective below is the identity.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any, Sequence, TypeVar

import torch
import torch.distributed as tdist

from plda.errors import ConfigError

T = TypeVar("T")


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str | None
    is_distributed: bool

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _default_device(local_rank: int) -> torch.device:
    if torch.cuda.is_available():
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(f"LOCAL_RANK={local_rank} but only {torch.cuda.device_count()} "
                              "CUDA device(s) are visible; lower --nproc_per_node")
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, str(default))
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"environment variable {name}={value!r} is not an integer") from None


def is_initialized() -> bool:
    return tdist.is_available() and tdist.is_initialized()


def init_distributed(backend: str | None = None, timeout_s: float = 1800.0) -> DistInfo:
    """Join the process group described by torchrun's ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``.

    Returns single-process info (no group) when those variables are absent or ``WORLD_SIZE`` is 1,
    and the existing group's info when one is already initialised.
    """
    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    if is_initialized():
        return DistInfo(tdist.get_rank(), tdist.get_world_size(), local_rank,
                        _default_device(local_rank), tdist.get_backend(), True)
    device = _default_device(local_rank)
    if world_size <= 1:
        return DistInfo(0, 1, local_rank, device, None, False)
    backend = backend or ("nccl" if device.type == "cuda" else "gloo")
    kwargs: dict[str, Any] = {}
    if backend == "nccl":
        kwargs["device_id"] = device
    tdist.init_process_group(backend=backend, rank=rank, world_size=world_size,
                             timeout=datetime.timedelta(seconds=timeout_s), **kwargs)
    return DistInfo(rank, world_size, local_rank, device, backend, True)


def single_process(device: torch.device | str | None = None) -> DistInfo:
    """Info for a plain (non-distributed) run on ``device`` (CUDA if available, else CPU)."""
    dev = torch.device(device) if device is not None else _default_device(0)
    return DistInfo(0, 1, 0, dev, None, False)


def barrier() -> None:
    if is_initialized():
        tdist.barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over ranks in place and return it."""
    if is_initialized():
        tdist.all_reduce(tensor, op=tdist.ReduceOp.SUM)
    return tensor


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """Average ``tensor`` over ranks in place and return it."""
    if is_initialized():
        tdist.all_reduce(tensor, op=tdist.ReduceOp.SUM)
        tensor /= tdist.get_world_size()
    return tensor


def broadcast_object(obj: T, src: int = 0) -> T:
    """Rank ``src``'s ``obj`` on every rank (picklable objects)."""
    if not is_initialized():
        return obj
    box = [obj]
    tdist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_object(obj: T) -> list[T]:
    """Every rank's ``obj``, ordered by rank."""
    if not is_initialized():
        return [obj]
    out: list[Any] = [None] * tdist.get_world_size()
    tdist.all_gather_object(out, obj)
    return out


def cleanup() -> None:
    """Leave the process group (no-op when none)."""
    if is_initialized():
        tdist.destroy_process_group()


def shard(items: Sequence[T], rank: int, world_size: int) -> list[T]:
    """Rank ``rank``'s share of ``items`` for inference: every ``world_size``-th item.

    Strided rather than contiguous so that ranks get similar image sizes when ``items`` is
    sorted; the shards are disjoint and together cover ``items`` exactly once.
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"shard: need 0 <= rank < world_size, got rank={rank}, "
                         f"world_size={world_size}")
    return list(items[rank::world_size])
