"""The one place that decides which device charnn computes on."""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Callable

import torch

from ..errors import CharnnError
from .contention import watch_cores
from .threads import ThreadChoice, ThreadPolicy, resolve_threads


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' picks CUDA, then Apple's MPS, then the CPU; asking for a missing one is an error."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise CharnnError("--device cuda: no CUDA GPU is available here", hint="use --device cpu or auto")
    if name == "mps" and not _mps_available():
        raise CharnnError("--device mps: Apple's MPS backend is not available here", hint="use --device cpu or auto")
    if name not in ("cpu", "cuda", "mps"):
        raise CharnnError(f"--device must be one of auto, cpu, cuda, mps, not {name!r}")
    return torch.device(name)


def set_torch_threads(threads: int) -> None:
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


def torch_trial(threads: int) -> float:
    """Seconds for a small piece of PyTorch's parallel work on `threads` threads, what
    charnn.runtime.contention.viable compares: 48 parallel passes, each ending at a barrier where the threads wait
    for each other (about a millisecond in all on an idle machine). A busy neighbour that makes threads
    wait for a core shows at so many barriers, where a few might all be lucky."""
    set_torch_threads(threads)
    generator = torch.Generator().manual_seed(0)
    x, a, b = (torch.rand(shape, generator=generator) for shape in ((1 << 16,), (256, 256), (256, 64)))
    started = time.perf_counter()
    for _ in range(16):
        torch.tanh(x)
        torch.sigmoid(x)
        torch.mm(a, b)
    return time.perf_counter() - started


def torch_thread_policy(device: torch.device, choice: ThreadChoice | None = None) -> ThreadPolicy:
    """The thread policy for PyTorch's work on `device`: charnn.runtime.threads' choice on the CPU; elsewhere the
    threads only feed the accelerator, so they stay as PyTorch set them."""
    if device.type != "cpu":
        return ThreadPolicy(ThreadChoice(torch.get_num_threads(), "the accelerator", torch.get_num_threads()),
                            lambda n: None)
    return ThreadPolicy(choice or resolve_threads(), set_torch_threads, trial=torch_trial, watch=watch_cores)


def is_out_of_memory(err: BaseException) -> bool:
    """CUDA raises OutOfMemoryError; the CPU and MPS allocators raise a RuntimeError that says so."""
    if isinstance(err, torch.cuda.OutOfMemoryError):
        return True
    text = str(err).lower()
    return isinstance(err, RuntimeError) and any(
        phrase in text for phrase in ("out of memory", "can't allocate memory", "not enough memory"))


@contextmanager
def out_of_memory_is_an_error(what: str | Callable[[], str], hint: str):
    """Turn running out of memory into a CharnnError that says what to reduce.

    `what` completes "out of memory (...) ..."; a callable is asked only when it happens.
    """
    try:
        yield
    except RuntimeError as err:
        if not is_out_of_memory(err):
            raise
        what = what() if callable(what) else what
        raise CharnnError(f"out of memory ({describe_allocation(err)}) {what}", hint=hint) from None


def describe_allocation(err: BaseException) -> str:
    """The part of torch's out-of-memory message that says what it tried to allocate, without its advice."""
    text = (str(err).strip() or type(err).__name__).splitlines()[0]
    if "DefaultCPUAllocator: " in text:  # "[enforce fail at ...] DefaultCPUAllocator: can't allocate memory: ..."
        return text.split("DefaultCPUAllocator: ")[-1].split(". ")[0]
    return ". ".join(text.split(". ")[:2]).rstrip(".")  # "CUDA out of memory. Tried to allocate 2.00 GiB"
