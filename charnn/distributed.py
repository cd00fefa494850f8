"""Data-parallel training with PyTorch's own engine: torch.distributed and DistributedDataParallel.

One process per device, started by torchrun (`torchrun --nproc-per-node N -m charnn train ...`),
which sets RANK, WORLD_SIZE and LOCAL_RANK. The global batch of `batch_size` contiguous streams is
split between the ranks, each carrying the hidden state of its own streams; DDP averages the
gradients, so the update is the one a single process computes on the whole batch, whatever the
number of ranks. Rank 0 alone writes files and evaluates; every rank agrees on time and on when to
stop through one small all-reduce per step.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from .errors import CharnnError

INIT_TIMEOUT = timedelta(minutes=30)  # rank 0 may spend a while encoding a large corpus first


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def streams(self, batch_size: int) -> slice:
        """This rank's columns of the global batch."""
        if batch_size % self.world_size:
            raise CharnnError(f"--batch-size {batch_size} does not divide among {self.world_size} processes",
                              hint="use a multiple of the number of processes")
        share = batch_size // self.world_size
        return slice(self.rank * share, (self.rank + 1) * share)


SINGLE = Ranks()


def ranks_from_environment() -> Ranks:
    """What torchrun (or any launcher that sets RANK/WORLD_SIZE/LOCAL_RANK) says this process is."""
    try:
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError:
        raise CharnnError("RANK, WORLD_SIZE and LOCAL_RANK must be integers") from None
    return Ranks(rank, world_size, local_rank)


def start(ranks: Ranks, device: torch.device) -> torch.device:
    """Join the process group (NCCL on GPUs, gloo on CPUs); returns this rank's device."""
    if not ranks.active:
        return device
    if device.type == "cuda":
        device = torch.device("cuda", ranks.local_rank % max(torch.cuda.device_count(), 1))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=INIT_TIMEOUT)
    return device


def stop(wait: bool = False) -> None:
    """Leave the process group. With `wait`, first meet every other rank there: a rank that tears its
    group down while another is still writing the last checkpoint can abort in gloo's threads."""
    if dist.is_available() and dist.is_initialized():
        if wait:
            dist.barrier()
        dist.destroy_process_group()


def _collective_device(device: torch.device) -> torch.device:
    return device if dist.get_backend() == "nccl" else torch.device("cpu")


def agree_max(values: list[float], device: torch.device) -> list[float]:
    """The largest of each value over all ranks: elapsed time, stop and save requests."""
    tensor = torch.tensor(values, dtype=torch.float64, device=_collective_device(device))
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor.tolist()


def mean_over_ranks(value: torch.Tensor) -> torch.Tensor:
    tensor = value.detach().clone().to(_collective_device(value.device))
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor / dist.get_world_size()


def gather_streams(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Every rank's (layers, streams, hidden) state joined along the streams, in rank order."""
    joined = []
    for tensor in tensors:
        pieces = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(pieces, tensor.contiguous())
        joined.append(torch.cat(pieces, dim=1))
    return joined


def gather_objects(value) -> list:
    values = [None] * dist.get_world_size()
    dist.all_gather_object(values, value)
    return values


def broadcast_object(value, source: int = 0):
    box = [value]
    dist.broadcast_object_list(box, src=source)
    return box[0]
