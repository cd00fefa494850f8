"""Memory free for an allocation, checked before making it.

PyTorch asked for more memory than the machine has either fails deep inside a kernel or, on a CPU,
makes the machine swap for minutes; and a size too large for 64 bits aborts in C++. So what a model,
a training window or a batch of samples needs is estimated first, in Python integers (`charnn.model.spec`:
the estimates count what dominates and err on the low side, refusing only what is sure not to fit),
and a request that cannot fit is refused here with one line that says which options to reduce.
"""

from __future__ import annotations

import os

from ..errors import CharnnError

TRAIN_HINT = "reduce --batch-size, --seq-len, --hidden-size or --layers, or train on another --device"
SAMPLE_HINT = "reduce --num-samples, --beam, --length or the model, or sample on another --device"


def available_bytes(device: str = "cpu") -> int | None:
    """Memory free for new allocations on `device` (None where it cannot be told)."""
    if device.startswith("cuda"):
        import torch  # noqa: PLC0415 (only a GPU needs it)

        return int(torch.cuda.mem_get_info(torch.device(device))[0])
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")  # all of it: the best we can say
    except (ValueError, OSError, AttributeError):
        return None


def human_bytes(n: int) -> str:
    if n >= 1e15:
        return "more than 1,000 TB"
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6)):
        if n >= size:
            return f"{n / size:,.1f} {unit}"
    return f"{n / 1e3:,.1f} kB"


def require_memory(need: int, what: str, device: str, hint: str) -> None:
    """Refuse `what` if it needs more than `device` has free."""
    available = available_bytes(device)
    if available is not None and need > available:
        raise CharnnError(f"out of memory ({what} needs about {human_bytes(need)}; {human_bytes(available)} is free "
                          f"on {device})", hint=hint)
