"""The precision a run trains in: float32, or mixed precision where the hardware multiplies in less.

Many CPUs multiply bfloat16 natively (AVX512-BF16 on AMD Zen 4 and later and on Intel from Cooper Lake,
AMX on Sapphire Rapids and later, BF16 on recent Arm cores), and every current GPU does. Mixed precision
runs the forward pass under `torch.autocast` (its products in bf16, or fp16 with a gradient scaler on a
GPU without bf16) while the weights, the optimiser's state, the loss and the checkpoints stay float32,
and the state carried from window to window is kept in float32 too. Evaluation always runs in float32, so
runs in either precision compare.

`--precision auto` (the default) takes bf16 where the device has it natively and a timing of the run's
own model shows it at least MIN_GAIN times as fast as float32; elsewhere float32.
"""

from __future__ import annotations

import platform
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import PRECISIONS
from ..errors import CharnnError

MIN_GAIN = 1.15  # bf16 must be this many times as fast as float32 for `auto` to take it
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def cpu_flags() -> set[str]:
    """The CPU's feature flags (Linux: /proc/cpuinfo's flags or Features line; elsewhere none known)."""
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("flags", "Features"):
                return set(value.split())
    except OSError:
        pass
    return set()


def native_bf16(device: torch.device) -> bool:
    """Whether `device` multiplies in bfloat16 natively (not emulated in float32 units)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    flags = cpu_flags()
    if platform.machine().lower() in ("aarch64", "arm64"):
        return "bf16" in flags
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def mixed_candidate(device: torch.device) -> str | None:
    """The mixed precision `auto` considers on `device`: bf16 where native, fp16 on a GPU without it."""
    if native_bf16(device):
        return "bf16"
    return "fp16" if device.type == "cuda" else None


def check_precision(name: str, device: torch.device) -> str:
    """A precision the user asked for, checked against the device: fp16 needs a CUDA GPU (on a CPU it is
    slower than float32 and its range needs a gradient scaler); bf16 runs anywhere, natively or not."""
    if name not in PRECISIONS:
        raise CharnnError(f"--precision must be one of {', '.join(PRECISIONS)}, not {name!r}")
    if name == "fp16" and device.type != "cuda":
        raise CharnnError(f"--precision fp16 needs a CUDA GPU; this run is on {device.type}",
                          hint="use bf16 (native on recent CPUs) or fp32")
    if name == "bf16" and device.type == "mps":
        raise CharnnError("--precision bf16 is not supported on Apple's MPS here", hint="use fp32")
    return name


@dataclass(frozen=True)
class Precision:
    """A resolved precision (fp32, bf16 or fp16): the autocast around a forward pass, and whether the
    gradients need scaling (fp16's range is too narrow for small gradients)."""

    name: str

    @property
    def mixed(self) -> bool:
        return self.name in _DTYPES

    @property
    def scaled(self) -> bool:
        return self.name == "fp16"

    def autocast(self, device: torch.device):
        if not self.mixed:
            return nullcontext()
        return torch.autocast(device.type, dtype=_DTYPES[self.name])

    def scaler(self, device: torch.device):
        """fp16's gradient scaler (None otherwise)."""
        return torch.amp.GradScaler(device.type) if self.scaled else None
