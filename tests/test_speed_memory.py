"""The speed memory: the best speeds this machine has shown, so that a plan made beside a busy neighbour
is the plan made on the idle machine (charnn.plan.memory)."""

from __future__ import annotations

import json
import os

import pytest
import torch

from charnn.plan import speed
from charnn.plan.memory import MAX_AGE_DAYS, SpeedMemory, machine_signature
from charnn.plan.shapes import Shape
from charnn.plan.sizing import choose
from charnn.runtime.threads import ThreadChoice
from test_sizing import CPU, situation

TWO_CORES = ThreadChoice(None, "auto", 2)
CPU_DEVICE = torch.device("cpu")


def memory_at(path, now=1_000_000.0, threads=(1, 2)):
    clock = [now]
    memory = SpeedMemory(path / "speeds.json", machine_signature(CPU_DEVICE, threads), clock=lambda: clock[0])
    return memory, clock


def test_the_memory_keeps_the_best_rate_per_shape_and_precision(tmp_path):
    memory, _ = memory_at(tmp_path)
    assert memory.best("2x256 b8 s128", "fp32") is None
    memory.remember("2x256 b8 s128", "fp32", 15_000.0)
    memory.remember("2x256 b8 s128", "fp32", 9_000.0)  # beside a neighbour: forgotten at once
    memory.remember("2x256 b8 s128", "bf16", 21_000.0)
    assert memory.best("2x256 b8 s128", "fp32") == 15_000.0
    assert memory.best("2x256 b8 s128", "bf16") == 21_000.0
    memory.remember("2x256 b8 s128", "fp32", 16_000.0)
    assert memory.best("2x256 b8 s128", "fp32") == 16_000.0
    # another thread choice (--threads 1) or another machine sees nothing of it
    other, _ = memory_at(tmp_path, threads=(1,))
    assert other.best("2x256 b8 s128", "fp32") is None


def test_old_speeds_are_forgotten_and_a_new_timing_replaces_them(tmp_path):
    memory, clock = memory_at(tmp_path)
    memory.remember("2x256 b8 s128", "fp32", 15_000.0)
    clock[0] += (MAX_AGE_DAYS + 1) * 86400
    assert memory.best("2x256 b8 s128", "fp32") is None
    memory.remember("2x256 b8 s128", "fp32", 12_000.0)
    assert memory.best("2x256 b8 s128", "fp32") == 12_000.0


@pytest.mark.parametrize("content", [b"", b"not json", b"[1, 2]", json.dumps({"x": {"fp32 a": "fast"}}).encode(),
                                     b"{" * 100_000])
def test_a_damaged_or_foreign_memory_is_an_empty_one_and_is_rewritten(tmp_path, content):
    (tmp_path / "speeds.json").write_bytes(content)
    memory, _ = memory_at(tmp_path)
    assert memory.best("2x256 b8 s128", "fp32") is None
    memory.remember("2x256 b8 s128", "fp32", 15_000.0)
    assert memory.best("2x256 b8 s128", "fp32") == 15_000.0


def test_what_is_not_a_regular_file_is_left_alone(tmp_path):
    target = tmp_path / "elsewhere.json"
    target.write_text("{}")
    (tmp_path / "speeds.json").symlink_to(target)
    memory, _ = memory_at(tmp_path)
    memory.remember("2x256 b8 s128", "fp32", 15_000.0)
    assert (tmp_path / "speeds.json").is_symlink() and target.read_text() == "{}"
    os.mkfifo(tmp_path / "fifo.json")
    memory = SpeedMemory(tmp_path / "fifo.json", "sig")
    memory.remember("2x256 b8 s128", "fp32", 15_000.0)  # returns at once: nothing waits for a reader
    assert memory.best("2x256 b8 s128", "fp32") is None


def test_a_read_only_place_costs_the_memory_not_the_plan(tmp_path):
    memory = SpeedMemory(tmp_path / "missing" / "deeper" / "speeds.json", "sig")
    (tmp_path / "missing").write_text("a file where a directory would be")
    memory.remember("2x256 b8 s128", "fp32", 15_000.0)
    assert memory.best("2x256 b8 s128", "fp32") is None


class Neighbour:
    """Timings of speed.py faked: every shape at CPU's speed times `load` (1: idle)."""

    def __init__(self, monkeypatch, load: float):
        self.load, self.now = load, 0.0
        monkeypatch.setattr(speed.time, "perf_counter", lambda: self.now)
        monkeypatch.setattr(speed, "time_training", self.time_training)
        monkeypatch.setattr(speed, "torch_trial", lambda threads: 0.001)

    def time_training(self, shape, vocab_size, device, seconds=1.0, warmup=2, threads=None, give_up=None,
                      precision="fp32"):
        self.now += 0.1
        return speed.Timing(shape, shape.chars_per_step / (CPU.chars_per_sec(shape) * self.load), 3)


def plan_beside(monkeypatch, load: float, memory: SpeedMemory | None):
    Neighbour(monkeypatch, load)
    speeds = speed.MeasuredSpeeds(CPU_DEVICE, 80, allowance=12.0, threads=TWO_CORES, memory=memory)
    return choose(situation(1.1e6, 600), speeds), speeds


def test_a_plan_beside_a_neighbour_is_the_idle_plan_once_the_machine_has_shown_its_speed(monkeypatch, tmp_path):
    forgetful, _ = plan_beside(monkeypatch, 0.5, None)
    idle, _ = plan_beside(monkeypatch, 1.0, memory_at(tmp_path)[0])
    assert forgetful.shape != idle.shape  # the neighbour would have cost a size
    busy, speeds = plan_beside(monkeypatch, 0.5, memory_at(tmp_path)[0])
    assert busy.shape == idle.shape and busy.steps == pytest.approx(idle.steps, rel=0.01)
    assert speeds.record()["2x256 b8 s128"]["remembered"] is True
    # and a faster timing than any remembered is taken, and kept
    faster, speeds = plan_beside(monkeypatch, 1.3, memory_at(tmp_path)[0])
    assert "remembered" not in speeds.record()["2x256 b8 s128"]
    assert memory_at(tmp_path)[0].best("2x256 b8 s128", "fp32") == pytest.approx(
        1.3 * CPU.chars_per_sec(Shape(2, 256, 8, 128)), rel=0.01)
