"""The best training speeds this machine has shown: what a busy moment cannot take away from a plan.

Sharing a machine only ever slows a timing, so the fastest a shape has trained here, in a precision and
at the thread counts charnn may use, is what the machine can do; a plan made beside a neighbour that
happens to be running would otherwise choose a smaller model than the same plan made a minute later.
`--size auto` plans at the better of the speed timed now and the speed remembered; the re-plan after a
run's first minute (charnn.plan.planning.Replanner) still catches a machine that stays slower.

The memory is a JSON file in the runs root's cache (`.cache/speeds.json`), keyed by what decides the
speeds: the CPU (or GPU) model, the thread counts charnn may use, and the versions of torch and charnn. A missing,
damaged or foreign file is an empty memory, and a write the disk refuses is skipped: the memory only
ever makes a plan steadier, never a run fail.
"""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path

import torch

from .. import __version__
from ..data.files import is_regular, read_json, write_json
from ..errors import CharnnError

FILE_NAME = "speeds.json"
MAX_AGE_DAYS = 90.0  # speeds older than this are forgotten: a machine's drivers and firmware change too
MAX_KEYS = 64  # machines (signatures) kept in one file, the most recent first


def machine_signature(device: torch.device, threads: tuple[int, ...]) -> str:
    """What decides a shape's speed besides the shape: the processor, the thread counts charnn may use
    on it, the software."""
    if device.type == "cuda":
        chip = torch.cuda.get_device_name(device)
    else:
        chip = _cpu_model() or platform.processor() or platform.machine()
    return f"{device.type}|{chip}|threads {','.join(map(str, threads))}|torch {torch.__version__}|charnn {__version__}"


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                return " ".join(value.split())
    except OSError:
        pass
    return None


class SpeedMemory:
    """The best characters a second each shape has trained at on this machine, per precision."""

    def __init__(self, path: Path | None, signature: str, clock=time.time):
        self.path, self.signature, self.clock = path, signature, clock

    @classmethod
    def in_cache(cls, cache: str | os.PathLike | None, device: torch.device, threads: tuple[int, ...]) -> SpeedMemory:
        """The memory in the cache directory `cache` (None: a memory that remembers nothing), for timings at
        the thread counts `threads`."""
        return cls(None if cache is None else Path(cache) / FILE_NAME, machine_signature(device, threads))

    def best(self, shape: str, precision: str) -> float | None:
        """The fastest `shape` has trained in `precision` here, within MAX_AGE_DAYS; None if unknown."""
        entry = self._entries().get(f"{precision} {shape}")
        if not isinstance(entry, dict):
            return None
        rate, when = entry.get("chars_per_sec"), entry.get("when")
        if not _number(rate) or rate <= 0 or not _number(when):
            return None
        return float(rate) if self.clock() - when <= MAX_AGE_DAYS * 86400 else None

    def remember(self, shape: str, precision: str, rate: float) -> None:
        """Keep `rate` if it beats what is remembered (or what is remembered has expired)."""
        if self.path is None or not rate > 0 or self.path.is_symlink() or (
                self.path.exists() and not is_regular(self.path)):
            return  # a device, FIFO or link where the file would be is left alone
        known = self.best(shape, precision)
        if known is not None and known >= rate:
            return
        data = self._data()
        entries = data.pop(self.signature, None)
        entries = entries if isinstance(entries, dict) else {}
        entries[f"{precision} {shape}"] = {"chars_per_sec": round(float(rate), 1), "when": round(self.clock())}
        kept = list(data.items())[: MAX_KEYS - 1]
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_json(self.path, {self.signature: entries, **dict(kept)})
        except (OSError, CharnnError):
            pass  # a full or read-only disk: the plan goes on with what it timed

    def _data(self) -> dict:
        data = read_json(self.path) if self.path is not None else None
        return data if isinstance(data, dict) else {}

    def _entries(self) -> dict:
        entries = self._data().get(self.signature)
        return entries if isinstance(entries, dict) else {}


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value
