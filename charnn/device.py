"""The one place that decides which device charnn computes on."""

from __future__ import annotations

import torch

from .errors import CharnnError


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
