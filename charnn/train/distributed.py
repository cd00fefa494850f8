"""Data-parallel training with PyTorch's own engine: torch.distributed and DistributedDataParallel.

One process per device, started by torchrun (`torchrun --nproc-per-node N -m charnn train ...`) or
`charnn train --nproc N`, which set RANK, WORLD_SIZE and LOCAL_RANK. The global batch of
`batch_size` contiguous streams is split between the ranks, each carrying the hidden state of its
own streams; DDP averages the gradients, so the update is the one a single process computes on the
whole batch, whatever the number of ranks. Rank 0 alone writes files and evaluates; every rank
agrees on time and on when to stop through one small all-reduce per step.

The trainer talks to a process group object and never asks how many processes there are:
`SingleProcess` is the group of one, whose every collective returns its own value.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Callable, TypeVar

import torch

from ..errors import CharnnError
from ..runtime.processes import Ranks

INIT_TIMEOUT = timedelta(minutes=30)  # rank 0 may spend a while encoding a large corpus first
T = TypeVar("T")


class SingleProcess:
    """One process: the whole batch is its own, and every collective is the value itself."""

    rank, world_size, is_main = 0, 1, True

    def check_batch(self, batch_size: int) -> None:
        """Refuse a batch that cannot be split between the processes (one process takes any)."""

    def streams(self, batch_size: int) -> slice:
        """This process's columns of the global batch."""
        return slice(0, batch_size)

    def local(self, batch: torch.Tensor) -> torch.Tensor:
        """This process's streams of a (T, B) window of the global batch."""
        return batch

    def join(self, device: torch.device) -> torch.device:
        """Join the group; returns this process's device."""
        return device

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """What the training step calls: the model, or DDP's wrapper that averages gradients."""
        return model

    def release(self) -> None:
        """Drop what `wrap` made: the caller has let go of the wrapper."""

    def reseed(self, seed: int) -> None:
        """Give this process its own dropout masks (rank 0 draws what a single process would)."""

    def agree_max(self, values: list[float], device: torch.device) -> list[float]:
        """The largest of each value over all processes: elapsed time, stop and save requests."""
        return values

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        return value

    def on_main(self, compute: Callable[[], T]) -> T:
        """`compute()` on rank 0, its result handed to every process (a CharnnError there, raised everywhere)."""
        return compute()

    def gather_state(self, hidden: list[torch.Tensor], rng: dict, device: torch.device) -> dict:
        """The training state a checkpoint needs from every process: the hidden state of the whole batch."""
        return {"hidden": hidden}

    def own_streams(self, hidden):
        """This process's part of a hidden state saved for the whole batch."""
        return hidden

    def restore_rng(self, train_state: dict, device: torch.device, seed: int) -> None:
        """Continue the random numbers a checkpoint's `train_state` recorded."""
        from .state import restore_rng_state  # noqa: PLC0415

        restore_rng_state(train_state["rng"], device)

    def leave(self, wait: bool = False) -> None:
        """Leave the group; with `wait`, first meet every other process there."""


class ProcessGroup(SingleProcess):
    """Several processes under torch.distributed: NCCL on GPUs, gloo on CPUs."""

    def __init__(self, ranks: Ranks):
        self.ranks = ranks
        self.rank, self.world_size, self.is_main = ranks.rank, ranks.world_size, ranks.is_main
        self._streams: slice | None = None

    def check_batch(self, batch_size: int) -> None:
        if batch_size % self.world_size:
            raise CharnnError(f"--batch-size {batch_size} does not divide among {self.world_size} processes",
                              hint="use a multiple of the number of processes")

    def streams(self, batch_size: int) -> slice:
        self.check_batch(batch_size)
        share = batch_size // self.world_size
        self._streams = slice(self.rank * share, (self.rank + 1) * share)
        return self._streams

    def local(self, batch: torch.Tensor) -> torch.Tensor:
        return batch[:, self._streams]

    def join(self, device: torch.device) -> torch.device:
        import torch.distributed as dist  # noqa: PLC0415

        if device.type == "cuda":
            device = torch.device("cuda", self.ranks.local_rank % max(torch.cuda.device_count(), 1))
            torch.cuda.set_device(device)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=INIT_TIMEOUT)
        return device

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        from torch.nn.parallel import DistributedDataParallel  # noqa: PLC0415

        device = next(model.parameters()).device
        # averages the gradients over the ranks during backward, overlapping with the computation
        return DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)

    def release(self) -> None:
        import gc  # noqa: PLC0415

        gc.collect()  # DDP's wrapper and its reducer refer to each other

    def reseed(self, seed: int) -> None:
        if self.rank:
            torch.manual_seed(seed + self.rank)

    def agree_max(self, values: list[float], device: torch.device) -> list[float]:
        import torch.distributed as dist  # noqa: PLC0415

        tensor = torch.tensor(values, dtype=torch.float64, device=_collective_device(device))
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return tensor.tolist()

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist  # noqa: PLC0415

        tensor = value.detach().clone().to(_collective_device(value.device))
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor / self.world_size

    def on_main(self, compute: Callable[[], T]) -> T:
        if not self.is_main:
            result = _broadcast(None)
            if isinstance(result, dict) and "charnn-error" in result:
                raise CharnnError(f"rank 0 failed: {result['charnn-error']}")
            return result
        try:
            result = compute()
        except CharnnError as err:
            _broadcast({"charnn-error": str(err)})
            raise
        return _broadcast(result)

    def gather_state(self, hidden: list[torch.Tensor], rng: dict, device: torch.device) -> dict:
        joined = [t.cpu() for t in _gather_streams([t.to(device) for t in hidden])]
        return {"hidden": joined, "rng_by_rank": _gather_objects(rng)}

    def own_streams(self, hidden):
        from ..model.network import select_streams  # noqa: PLC0415

        return None if hidden is None else select_streams(hidden, self._streams)

    def restore_rng(self, train_state: dict, device: torch.device, seed: int) -> None:
        from .state import restore_rng_state  # noqa: PLC0415

        by_rank = train_state.get("rng_by_rank") or []
        if len(by_rank) == self.world_size:  # the same ranks as before: each continues its own numbers
            restore_rng_state(by_rank[self.rank], device)
            return
        restore_rng_state(train_state["rng"], device)
        if self.rank:  # a different number of ranks cannot continue exactly; stay distinct and seeded
            step = int(train_state["progress"]["step"])
            torch.manual_seed(seed + self.rank + 7919 * step)

    def leave(self, wait: bool = False) -> None:
        leave_process_group(wait)


def process_group(ranks: Ranks) -> SingleProcess:
    return ProcessGroup(ranks) if ranks.active else SingleProcess()


def leave_process_group(wait: bool = False) -> None:
    """Leave the process group, if this process joined one. With `wait`, first meet every other rank
    there: a rank that tears its group down while another is still writing the last checkpoint can
    abort in gloo's threads."""
    import torch.distributed as dist  # noqa: PLC0415

    if dist.is_available() and dist.is_initialized():
        if wait:
            dist.barrier()
        dist.destroy_process_group()


def _backend() -> str:
    import torch.distributed as dist  # noqa: PLC0415

    return dist.get_backend()


def _collective_device(device: torch.device) -> torch.device:
    return device if _backend() == "nccl" else torch.device("cpu")


def _gather_streams(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Every rank's (layers, streams, hidden) state joined along the streams, in rank order."""
    import torch.distributed as dist  # noqa: PLC0415

    joined = []
    for tensor in tensors:
        pieces = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(pieces, tensor.contiguous())
        joined.append(torch.cat(pieces, dim=1))
    return joined


def _gather_objects(value) -> list:
    import torch.distributed as dist  # noqa: PLC0415

    values = [None] * dist.get_world_size()
    dist.all_gather_object(values, value)
    return values


def _broadcast(value, source: int = 0):
    import torch.distributed as dist  # noqa: PLC0415

    box = [value]
    dist.broadcast_object_list(box, src=source)
    return box[0]
