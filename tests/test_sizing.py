"""--size: the rule's choices for given corpus sizes, budgets and device speeds (fixed speed tables, no
timing), options the user gives are never overridden, --size small is today's defaults, --dry-run."""

from __future__ import annotations

import hashlib
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from charnn.plan import sizing
from charnn.config import ModelConfig, TrainConfig
from charnn.plan.shapes import parse_shape
from charnn.plan.sizing import Budget, Shape, Situation, SpeedTable, choose
from charnn.runtime.threads import ThreadChoice
from conftest import REPO, TINY, run_cli

# this 2-core CI machine's speeds (chars/s, 2 threads, idle), as scripts/sizing-results.jsonl records them
CPU = SpeedTable({"2x128 b8 s128": 39435, "2x256 b8 s128": 15474, "2x384 b8 s128": 7271, "2x512 b8 s128": 3957,
                  "3x512 b8 s128": 2530, "2x256 b16 s128": 17775})
MB = 1_000_000


def situation(corpus_chars: float, seconds: float | None = None, **kwargs) -> Situation:
    train = int(corpus_chars * 0.9)
    budget = kwargs.pop("budget", Budget(seconds=seconds))
    return Situation(train_chars=train, vocab_size=kwargs.pop("vocab_size", 80), budget=budget,
                     val_chars=kwargs.pop("val_chars", int(corpus_chars) - train), **kwargs)


def width(plan) -> int:
    return plan.shape.parameters(80)


class FakeGPU:
    """A device on which a step costs the same up to 256 streams (wider batches are free), 30x a CPU."""

    device_type = "cuda"

    def chars_per_sec(self, shape: Shape) -> float:
        return CPU.chars_per_sec(replace(shape, batch_size=8)) * 30 * min(shape.batch_size, 256) / 8


# --- the rule ---------------------------------------------------------------------------------


def test_tiny_shakespeare_at_ten_minutes_on_this_cpu_gets_the_default_shape_with_half_a_step_of_dropout():
    plan = choose(situation(1.1 * MB, 600), CPU)
    assert (plan.shape.num_layers, plan.shape.hidden_size, plan.shape.batch_size, plan.shape.seq_len) == (2, 256, 8, 128)
    # it reads its text 9 times: the study's Tiny Shakespeare at 5.5 epochs made 1.485 with 0.05, 1.496 with 0.1
    assert 8 < plan.epochs < 10 and plan.model["dropout"] == 0.05 and plan.train["lr"] == 2e-3
    assert 8000 < plan.steps < 9000  # ten minutes at 15k characters a second, evaluations included
    assert plan.seconds == pytest.approx(600, rel=0.01)


def test_a_small_corpus_gets_a_small_model_with_more_dropout():
    small = choose(situation(0.2 * MB, 600), CPU)
    default = sizing.default_shape().parameters(80)
    assert width(small) < 0.6 * default  # the study's 200 KB file: 2x192 beat 2x128 and the default 2x256
    assert small.model["dropout"] > ModelConfig.dropout  # it reads the text dozens of times


def test_a_long_budget_on_a_large_corpus_gets_a_larger_model():
    plan = choose(situation(24 * MB, 3600), CPU)
    assert width(plan) > sizing.default_shape().parameters(80)
    # it reads its text about once: half a step of dropout (the study's code corpus at ten minutes: 0.05 made
    # 1.129, 0.1 1.115 and 0 1.176, where its held-out text is other modules than it trains on)
    assert plan.epochs < 2 and plan.model["dropout"] == 0.05


@pytest.mark.parametrize("corpus", [0.2 * MB, 1 * MB, 3 * MB, 24 * MB])
def test_more_time_never_means_a_smaller_model(corpus):
    sizes = [width(choose(situation(corpus, seconds), CPU)) for seconds in (120, 600, 3600, 8 * 3600)]
    assert sizes == sorted(sizes)


@pytest.mark.parametrize("seconds", [120, 600, 3600])
def test_more_text_never_means_a_smaller_model(seconds):
    """(With evaluations of the same length: a larger validation text costs training time.)"""
    sizes = [width(choose(replace(situation(corpus, seconds), val_chars=20_000), CPU))
             for corpus in (0.2 * MB, 1 * MB, 3 * MB, 24 * MB)]
    assert sizes == sorted(sizes)


def test_a_faster_device_gets_a_larger_model():
    slow, fast = (choose(situation(24 * MB, 600), replace(CPU, factor=f)) for f in (1.0, 8.0))
    assert width(fast) > width(slow)
    assert fast.shape.batch_size == slow.shape.batch_size == 8  # a CPU keeps its 8 streams


def test_a_gpu_gets_more_streams_and_a_larger_model():
    cpu, gpu = choose(situation(24 * MB, 3600), CPU), choose(situation(24 * MB, 3600), FakeGPU())
    assert gpu.shape.batch_size == 256  # wider batches cost nothing there, up to 256 on this fake
    assert width(gpu) > width(cpu)
    assert gpu.seconds == pytest.approx(3600, rel=0.01)


def test_a_small_corpus_limits_the_streams_on_a_gpu():
    plan = choose(situation(1.1 * MB, 600), FakeGPU())
    windows = plan.shape.chars_per_step * sizing.MIN_WINDOWS
    assert 8 < plan.shape.batch_size and windows <= situation(1.1 * MB).train_chars


def test_streams_divide_among_processes():
    plan = choose(situation(3 * MB, 600, streams_multiple=3), CPU)
    assert plan.shape.batch_size % 3 == 0


def test_step_and_epoch_budgets_need_no_timing():
    """With --max-steps or --epochs the characters read are known: the choice needs no device speed."""
    by_steps = choose(situation(3 * MB, budget=Budget(steps=8000)))
    assert (by_steps.shape.hidden_size, by_steps.steps, by_steps.seconds) == (256, 8000, None)
    by_epochs = choose(situation(3 * MB, budget=Budget(epochs=1)))
    assert by_epochs.epochs == pytest.approx(1, abs=0.01) and by_epochs.shape.hidden_size < 256


def test_a_short_step_budget_gets_the_smallest_model():
    plan = choose(situation(1 * MB, budget=Budget(steps=1)))
    assert plan.shape.hidden_size == min(sizing.WIDTHS) and "smallest" in plan.reason


# --- the default budget ---------------------------------------------------------------------------


@pytest.mark.parametrize("corpus,low,high", [(0.2 * MB, 120, 125), (1.1 * MB, 600, 800), (3.2 * MB, 1800, 2400),
                                             (100 * MB, 3600, 3600)])
def test_the_default_budget_follows_the_corpus(corpus, low, high):
    plan = choose(situation(corpus), CPU)
    assert low - 1 <= plan.seconds <= high + 1
    assert plan.train["max_steps"] == plan.steps and plan.train["patience"] == sizing.DEFAULT_PATIENCE
    assert "default budget" in plan.budget


def test_a_given_limit_is_the_budget():
    plan = choose(situation(3 * MB, 600), CPU)
    assert "max_steps" not in plan.train and "patience" not in plan.train
    assert plan.budget == "--max-time 10 min"


def test_the_default_budget_keeps_a_given_patience():
    assert "patience" not in choose(situation(1 * MB, train={"patience": 9}), CPU).train


# --- options the user gives ------------------------------------------------------------------------

CHOSEN = {"num_layers": st.integers(1, 4), "hidden_size": st.sampled_from([16, 100, 256, 700]),
          "embed_size": st.sampled_from([8, 64, 300]), "dropout": st.sampled_from([0.0, 0.25, 0.5]),
          "batch_size": st.sampled_from([1, 6, 8, 64]), "seq_len": st.sampled_from([16, 64, 200]),
          "lr": st.sampled_from([1e-4, 3e-3])}


@settings(max_examples=150, deadline=None)
@given(given_options=st.fixed_dictionaries({}, optional=CHOSEN),
       corpus=st.sampled_from([0.05 * MB, 1 * MB, 30 * MB]),
       budget=st.sampled_from([Budget(seconds=120), Budget(seconds=3600), Budget(steps=500), Budget()]),
       device=st.sampled_from([CPU, replace(CPU, factor=0.1), FakeGPU()]),
       size=st.sampled_from(["auto", "tiny", "small", "large"]))
def test_options_the_user_gives_are_never_overridden(given_options, corpus, budget, device, size):
    model = {k: v for k, v in given_options.items() if k in sizing.MODEL_OPTIONS}
    train = {k: v for k, v in given_options.items() if k in sizing.TRAIN_OPTIONS}
    plan = choose(situation(corpus, budget=budget, model=model, train=train), device, size)
    assert not set(plan.model) & set(given_options) and not set(plan.train) & set(given_options)
    chosen = {**plan.model, **plan.train, **given_options}
    assert set(sizing.MODEL_OPTIONS[1:] + sizing.TRAIN_OPTIONS) <= set(chosen)  # every option settled
    shape = plan.shape
    for name, value in given_options.items():
        if hasattr(shape, name) and name != "embed_size":
            assert getattr(shape, name) == value
    if "embed_size" in given_options:
        assert shape.embed == given_options["embed_size"]
    ModelConfig(vocab_size=80, **{k: v for k, v in chosen.items() if k in sizing.MODEL_OPTIONS}).validate()


# --- presets ----------------------------------------------------------------------------------------


def test_size_small_is_exactly_the_fixed_defaults():
    plan = choose(situation(1 * MB, 600), CPU, "small")
    model, train = ModelConfig(vocab_size=80), TrainConfig()
    assert plan.model == {"num_layers": model.num_layers, "hidden_size": model.hidden_size,
                          "embed_size": model.hidden_size, "dropout": model.dropout}
    assert {k: plan.train[k] for k in ("batch_size", "seq_len", "lr")} == {
        "batch_size": train.batch_size, "seq_len": train.seq_len, "lr": train.lr}
    assert set(plan.train) == {"batch_size", "seq_len", "lr", "eval_every", "eval_chars"}  # these follow the budget
    assert (model.num_layers, model.hidden_size, model.dropout, train.batch_size, train.seq_len, train.lr) == (
        2, 256, 0.1, 8, 128, 2e-3)  # today's defaults, as the README's measurement was made with


def test_presets_are_fixed_whatever_the_corpus_and_budget():
    plans = [choose(situation(corpus, seconds), CPU, "large") for corpus in (0.2 * MB, 24 * MB)
             for seconds in (120, 3600)]
    assert {(p.shape.name, p.model["dropout"]) for p in plans} == {("3x768 b8 s128", 0.2)}


def test_the_plan_says_what_it_chose_and_why():
    plan = choose(situation(24 * MB, 3600), CPU)
    summary = plan.describe()
    assert summary.startswith(f"2x{plan.shape.hidden_size} LSTM, 8 streams x 128: ") and summary.endswith(" in ~1h")
    assert "characters per parameter" in plan.reason and "epochs" in plan.reason
    assert json.loads(json.dumps(plan.to_dict()))["summary"] == summary


# --- the command line ---------------------------------------------------------------------------------


def test_train_prints_its_choice_and_stores_it(workdir, tmp_path):
    run = tmp_path / "run"
    result = run_cli("train", workdir["corpus"], "--max-steps", "3", "--seq-len", "16", "--eval-every", "3",
                     "--device", "cpu", "--out", run)
    stderr = result.stderr.decode()
    assert result.returncode == 0, stderr
    config = json.loads((run / "config.json").read_text())
    sized = config["sizing"]
    assert stderr.splitlines()[0] == f"size auto: {sized['summary']}"
    assert "why: " in stderr and "budget: 3 steps" in stderr
    assert config["model"]["hidden_size"] == sized["model"]["hidden_size"] and config["train"]["seq_len"] == 16
    assert "seq_len" not in sized["train"]  # given, so not chosen


def test_size_small_trains_todays_defaults(workdir, tmp_path):
    run = tmp_path / "run"
    result = run_cli("train", workdir["corpus"], "--size", "small", "--max-steps", "1", "--seq-len", "16",
                     "--device", "cpu", "--out", run, "-q")
    assert result.returncode == 0, result.stderr.decode()
    config = json.loads((run / "config.json").read_text())
    model, train = ModelConfig(vocab_size=config["model"]["vocab_size"]), TrainConfig()
    assert ModelConfig.from_dict(config["model"]) == model
    assert {k: config["train"][k] for k in ("batch_size", "lr", "max_steps", "patience")} == {
        "batch_size": train.batch_size, "lr": train.lr, "max_steps": 1, "patience": None}


def test_dry_run_prints_the_plan_and_writes_nothing(workdir, tmp_path):
    result = run_cli("train", workdir["corpus"], *TINY[2:], "--dry-run", cwd=tmp_path,
                     env={"CHARNN_RUNS_DIR": str(tmp_path / "runs")})
    stderr = result.stderr.decode()
    assert result.returncode == 0 and result.stdout == b"", stderr
    assert "size auto: 1x32 LSTM, 4 streams x 16" in stderr
    assert "default budget" in stderr and "--patience 4" in stderr
    assert list(tmp_path.iterdir()) == []


def test_dry_run_does_not_resume(workdir):
    result = run_cli("train", "--resume", workdir["run"], "--dry-run")
    assert result.returncode == 1 and "charnn: error: --dry-run plans a new run" in result.stderr.decode()


def test_a_run_stopped_by_its_patience_is_finished(tmp_path, monkeypatch):
    """The default budget stops early with --patience: `charnn runs` must not call such a run unfinished."""
    from charnn import start_training, summarize_run  # noqa: PLC0415
    from conftest import SHAKESPEARE, tiny_train_config  # noqa: PLC0415

    corpus = tmp_path / "corpus.txt"
    corpus.write_bytes(SHAKESPEARE.read_bytes()[:20_000])
    run = tmp_path / "runs" / "tiny"
    model = dict(num_layers=1, hidden_size=16, dropout=0.0)
    start_training([str(corpus)], model, tiny_train_config(max_steps=10, eval_every=5), out=run).run()
    config = json.loads((run / "config.json").read_text())
    config["train"].update(max_steps=1000, patience=2)
    (run / "config.json").write_text(json.dumps(config))
    best = min(r["val_loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
               if r["kind"] == "eval")
    worse = {"kind": "eval", "epoch": 0.5, "val_loss": best + 0.1, "val_bpc": 1.0, "best_val_loss": best}
    with (run / "metrics.jsonl").open("a") as f:
        f.write(json.dumps({**worse, "step": 15}) + "\n")
    assert summarize_run(run).status == "unfinished"  # one evaluation without a new best: patience 2 not out
    with (run / "metrics.jsonl").open("a") as f:
        f.write(json.dumps({**worse, "step": 20}) + "\n")
    assert summarize_run(run).status == "finished"


class FakeClock:
    """speed.py's clock and timings, faked: each timing of a shape takes `cost` seconds of this clock, and
    runs at `speeds` scaled by `load(threads, timing number)` (1: idle)."""

    def __init__(self, monkeypatch, speeds, cost: float, load=lambda threads, n: 1.0):
        from charnn.plan import speed  # noqa: PLC0415

        self.now, self.timed, self.speeds, self.cost, self.load = 0.0, [], speeds, cost, load
        monkeypatch.setattr(speed.time, "perf_counter", lambda: self.now)
        monkeypatch.setattr(speed, "time_training", self.time_training)
        monkeypatch.setattr(speed, "torch_trial", lambda threads: 0.001)  # every count worth timing

    def time_training(self, shape, vocab_size, device, seconds=1.0, warmup=2, threads=None, give_up=None,
                      precision="fp32"):
        from charnn.plan.speed import Timing  # noqa: PLC0415

        self.now += self.cost
        self.timed.append((shape.name, threads))
        rate = self.speeds.chars_per_sec(shape) * self.load(threads, len(self.timed))
        return Timing(shape, shape.chars_per_step / rate, 3)


TWO_CORES = ThreadChoice(None, "auto", 2)


def test_on_a_cpu_the_reference_timing_scales_the_measured_table(monkeypatch):
    import torch  # noqa: PLC0415

    from charnn.plan.speed import MeasuredSpeeds  # noqa: PLC0415

    clock = FakeClock(monkeypatch, replace(CPU, factor=0.5), cost=0.1)
    speeds = MeasuredSpeeds(torch.device("cpu"), 80, allowance=2.4, threads=TWO_CORES)
    plan = choose(situation(1.1 * MB, 600), speeds)
    # a warm-up step, then the reference shape at each thread count, twice
    assert clock.timed[1:5] == [("2x256 b8 s128", 1), ("2x256 b8 s128", 2)] * 2
    assert speeds.chars_per_sec(Shape(2, 384, 8, 128)) == pytest.approx(CPU.chars_per_sec(Shape(2, 384, 8, 128)) / 2)
    assert width(plan) < width(choose(situation(1.1 * MB, 600), CPU))  # a machine half as fast: a smaller model


def test_a_busy_neighbour_or_a_busy_moment_does_not_change_the_plan(monkeypatch):
    import torch  # noqa: PLC0415

    from charnn.plan.speed import MeasuredSpeeds  # noqa: PLC0415

    idle = choose(situation(1.1 * MB, 600), CPU)
    # two threads beside a spinning neighbour: a tenth of the speed; and the first timings of all at a third
    FakeClock(monkeypatch, CPU, cost=0.1, load=lambda threads, n: (0.1 if threads == 2 else 1.0) / (3 if n < 4 else 1))
    speeds = MeasuredSpeeds(torch.device("cpu"), 80, allowance=12.0, threads=TWO_CORES)
    plan = choose(situation(1.1 * MB, 600), speeds)
    assert plan.shape == idle.shape and plan.steps == pytest.approx(idle.steps, rel=0.01)
    assert speeds.record()["2x256 b8 s128"] == {"chars_per_sec": pytest.approx(CPU.table["2x256 b8 s128"]), "threads": 1}


def test_a_checked_shape_is_taken_at_its_own_timing(monkeypatch):
    import torch  # noqa: PLC0415

    from charnn.plan.speed import MeasuredSpeeds  # noqa: PLC0415

    # a machine whose 2x384 is twice as fast as the table says, relative to its 2x256 (bf16, say)
    machine = SpeedTable({**CPU.table, "2x384 b8 s128": 2 * CPU.table["2x384 b8 s128"]})
    FakeClock(monkeypatch, machine, cost=0.1)
    speeds = MeasuredSpeeds(torch.device("cpu"), 80, allowance=60.0, threads=TWO_CORES)
    assert speeds.chars_per_sec(Shape(2, 384, 8, 128)) == pytest.approx(CPU.table["2x384 b8 s128"])  # the table
    assert speeds.check([Shape(2, 384, 8, 128)])
    assert not speeds.check([Shape(2, 384, 8, 128), Shape(2, 256, 8, 128)])  # timed already
    assert speeds.chars_per_sec(Shape(2, 384, 8, 128)) == pytest.approx(machine.table["2x384 b8 s128"])


def test_on_a_gpu_the_shapes_are_timed_within_the_allowance(monkeypatch):
    import torch  # noqa: PLC0415

    from charnn.plan.speed import MeasuredSpeeds  # noqa: PLC0415

    clock = FakeClock(monkeypatch, FakeGPU(), cost=1.0)
    speeds = MeasuredSpeeds(torch.device("cuda"), 80, allowance=12.0, threads=TWO_CORES)  # 2% of ten minutes
    plan = choose(situation(24 * MB, 600), speeds)
    assert len(clock.timed) <= 1 + 12 + 1  # the warm-up, then timings until the allowance is spent
    assert plan.shape.batch_size > 8 and width(plan) > width(choose(situation(24 * MB, 600), CPU))


# --- evaluation follows the budget ----------------------------------------------------------------


def _eval_seconds(plan, speeds=CPU) -> float:
    """The time a plan's evaluations take, at the evaluation speed the rule assumes."""
    evaluations = plan.steps // plan.train["eval_every"] + 1  # and once at the end
    return evaluations * plan.train["eval_chars"] / (sizing.EVAL_SPEEDUP * speeds.chars_per_sec(plan.shape))


@pytest.mark.parametrize("corpus", [0.2 * MB, 1.1 * MB, 24 * MB, 1000 * MB])
@pytest.mark.parametrize("seconds", [120, 600, 3600])
def test_evaluation_takes_at_most_its_share_of_a_time_budget_whatever_the_corpus(corpus, seconds):
    plan = choose(situation(corpus, seconds), CPU)
    val = int(corpus) - int(corpus * 0.9)
    assert _eval_seconds(plan) <= sizing.EVAL_SHARE * seconds * 1.02  # the last evaluation may add a little
    assert min(100_000, val) <= plan.train["eval_chars"] <= 1_000_000
    assert plan.train["eval_every"] >= sizing.MIN_EVAL_EVERY


def test_a_long_run_on_a_big_corpus_evaluates_often_enough_to_choose_a_best():
    plan = choose(situation(24 * MB, 3600), CPU)
    assert plan.steps // plan.train["eval_every"] >= 15


def test_evaluation_given_by_the_user_is_kept_and_the_rest_fits_around_it():
    every = choose(situation(24 * MB, 600, train={"eval_every": 200}), CPU)
    assert "eval_every" not in every.train
    assert every.train["eval_chars"] == sizing.EVAL_CHARS_RANGE[0]  # as few as still make a steady figure
    whole = choose(situation(1.1 * MB, 600, train={"eval_chars": None}), CPU)  # --eval-chars 0: all of it
    assert "eval_chars" not in whole.train and whole.train["eval_every"] >= 500
    both = choose(situation(24 * MB, 600, train={"eval_every": 100, "eval_chars": 5000}), CPU)
    assert "eval_every" not in both.train and "eval_chars" not in both.train


def test_a_step_budget_evaluates_alike_on_any_device():
    fast, slow = (choose(situation(3.2 * MB, budget=Budget(steps=20_000)), speeds)
                  for speeds in (CPU, replace(CPU, factor=0.3)))
    assert fast.train == slow.train


# --- planning again after the first minute ---------------------------------------------------------


class Sized:
    """What planning.Replanner reads of a planning.Sizing: the situation, the speeds, the --size, and the
    speeds timed again under the load a re-plan saw (`now`: the same relative speeds, unless given)."""

    def __init__(self, situation, speeds, size="auto", precision="fp32", now=None):
        self.situation, self.speeds, self.size, self.precision = situation, speeds, size, precision
        self.now, self.allowances = now or speeds, []

    def timed_now(self, allowance):
        self.allowances.append(allowance)
        return Timed(self.now)


class Timed:
    """Speeds timed afresh (as speed.MeasuredSpeeds): a table whose shapes are all timed already."""

    device_type = "cpu"

    def __init__(self, table):
        self.table, self.checked = table, []

    def chars_per_sec(self, shape):
        return self.table.chars_per_sec(shape)

    def check(self, shapes, force=False):
        self.checked += shapes
        return False

    def record(self):
        return {"2x256 b8 s128": {"chars_per_sec": self.table.chars_per_sec(sizing.default_shape()), "threads": 1}}


def replanner(corpus: float, seconds: float | None, now=None):
    from charnn.plan.planning import Replanner  # noqa: PLC0415

    sized = Sized(situation(corpus, seconds), SpeedTable(CPU.table), now=now)
    plan = choose(sized.situation, sized.speeds)
    return Replanner(sized, plan, lambda new: ("model", "config")), plan


def test_a_run_that_sees_another_speed_than_it_planned_is_planned_again_for_the_rest_of_its_budget():
    replan, plan = replanner(24 * MB, 3600)
    assert not replan.due(59.0) and replan.due(60.0)
    new = replan.decide(60.0, seen=plan.chars_per_sec / 3)  # a third of the speed: a busy neighbour came
    assert width(new.plan) < width(plan)
    again = choose(situation(24 * MB, 3540), replace(CPU, factor=1 / 3))  # the rest of the hour, at the speed seen
    assert (new.plan.shape, new.plan.model, new.plan.steps) == (again.shape, again.model, again.steps)
    assert new.plan.replanned["ratio"] == pytest.approx(1 / 3, abs=1e-3)
    assert new.plan.replanned["first"] == plan.describe() and (new.model_config, new.config) == ("model", "config")
    assert new.plan.train["precision"] == "fp32"  # the run keeps the precision it chose
    faster = replanner(24 * MB, 3600)[0].decide(60.0, seen=plan.chars_per_sec * 3)
    assert width(faster.plan) > width(plan)


def test_a_new_plan_takes_the_relative_speeds_timed_under_the_load_it_saw():
    """Beside busy neighbours the policy falls back to one thread, which costs a small model less than a
    large one: the new plan reads the shapes' speeds as timed again then, scaled to the speed seen."""
    busy = SpeedTable({name: rate * (0.6 if parse_shape(name).hidden_size <= 256 else 0.3)
                       for name, rate in CPU.table.items()})
    replan, plan = replanner(3.2 * MB, 1800, now=busy)
    seen = plan.chars_per_sec / 4
    new = replan.decide(60.0, seen=seen)
    again = choose(situation(3.2 * MB, 1740), replace(busy, factor=seen / busy.chars_per_sec(plan.shape)))
    uniform = choose(situation(3.2 * MB, 1740), replace(CPU, factor=1 / 4))
    assert width(plan) > width(new.plan) > width(uniform)  # every shape slowed alike: a model smaller still
    assert (new.plan.shape, new.plan.steps) == (again.shape, again.steps)
    assert replan.sized.allowances == [pytest.approx(18.0)]  # 1% of the half hour goes into the timing
    assert new.plan.timings != plan.timings and new.plan.replanned["first_timings"] == plan.timings


@pytest.mark.parametrize("corpus, seconds, elapsed, ratio", [
    (24 * MB, 3600, 60.0, 1.4),  # within 1.5x of the plan
    (24 * MB, 3600, 60.0, 1 / 1.4),
    (24 * MB, 3600, 181.0, 3.0),  # more than 5% of the budget spent
    (1.1 * MB, 600, 60.0, 3.0),  # a ten-minute budget: the first minute is 10% of it
])
def test_no_new_plan_near_the_planned_speed_or_late_in_the_budget(corpus, seconds, elapsed, ratio):
    replan, plan = replanner(corpus, seconds)
    assert replan.decide(elapsed, seen=plan.chars_per_sec * ratio) is None


def test_a_ten_minute_run_beside_a_neighbour_that_stays_is_planned_again_after_fifteen_seconds():
    replan, plan = replanner(1.1 * MB, 600)
    assert not replan.due(14.0) and replan.due(15.0)  # half of the 30 seconds that are 5% of the budget
    new = replan.decide(15.0, seen=plan.chars_per_sec / 2.5)  # two spinning cores: the idle memory misled
    again = choose(situation(1.1 * MB, 585), replace(CPU, factor=1 / 2.5))
    assert width(new.plan) < width(plan) and new.plan.shape == again.shape
    short, _ = replanner(1.1 * MB, 120)  # two minutes: 5% is six seconds, too few to measure a speed in
    assert not short.due(14.0) and short.decide(15.0, seen=plan.chars_per_sec / 3) is None


def test_the_default_budget_is_planned_again_too():
    replan, plan = replanner(3.2 * MB, None)  # War and Peace: the default budget, over 20 minutes here
    assert plan.seconds > 1200
    new = replan.decide(60.0, seen=plan.chars_per_sec / 2)
    # at half the speed the 2x256 reads its ten epochs in twice the time: the hour's cap, less the minute spent
    assert width(new.plan) <= width(plan) and new.plan.seconds == pytest.approx(3540, rel=0.01)
    assert new.plan.steps < plan.steps  # fewer characters in the capped hour than planned: never a larger model
    assert new.plan.train["max_steps"] == new.plan.steps


# --- the precision the plan is made in -------------------------------------------------------------


@pytest.mark.parametrize("gain, chosen", [(1.4, "bf16"), (1.05, "fp32")])
def test_auto_plans_in_bf16_where_it_pays_and_in_fp32_elsewhere(monkeypatch, gain, chosen):
    import torch  # noqa: PLC0415

    from charnn.plan import planning, speed  # noqa: PLC0415
    from charnn.plan.request import TrainRequest  # noqa: PLC0415

    clock = FakeClock(monkeypatch, CPU, cost=0.1)
    speeds = {"fp32": CPU, "bf16": replace(CPU, factor=gain)}
    clock.time_training = lambda shape, *a, precision="fp32", **k: speed.Timing(
        shape, shape.chars_per_step / speeds[precision].chars_per_sec(shape), 3)
    monkeypatch.setattr("charnn.plan.speed.time_training", clock.time_training)
    monkeypatch.setattr(planning, "mixed_candidate", lambda device: "bf16")
    config = TrainConfig(max_time=600.0, device="cpu")
    sized = planning.Sizing(TrainRequest(corpus=("x",), train=config, given=frozenset({"max_time", "device"})), 80,
                            (1_000_000, 110_000))
    plan = sized.plan()
    assert plan.train["precision"] == chosen and plan.precision["chosen"] == chosen
    assert plan.precision["gain"] == pytest.approx(gain, rel=0.01)
    in_fp32 = choose(situation(1.11 * MB, 600), CPU)
    assert (plan.chars > 1.3 * in_fp32.chars) == (chosen == "bf16")  # planned at bf16's speed: more text read
    assert sized.speeds.precision == chosen and torch.device("cpu").type == sized.speeds.device_type
    now = sized.timed_now(6.0)  # a re-plan's: the chosen precision, timed afresh, without the memory
    assert (now.precision, now.allowance, now.memory, now.timed, now.threads) == (chosen, 6.0, None, {},
                                                                                 sized.speeds.threads)


def test_the_study_fit_scores_todays_constants_on_the_recorded_cells():
    # scripts/sizing_fit.py reads the committed results (no training): today's rule is its first row
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "sizing_fit.py"), "--top", "3"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if line.startswith("| CHARS_PER_PARAMETER")]
    assert "(today's)" in rows[0] and len(rows) >= 2
    assert "cells measured, over" in result.stdout


def _study():
    import importlib.util  # noqa: PLC0415

    spec = importlib.util.spec_from_file_location("sizing_study", REPO / "scripts" / "sizing.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_the_study_trains_two_minute_cells_at_every_seed_and_scores_their_mean():
    study = _study()
    results = study.read_results()
    corpora, speeds = study.corpora_info(results), study.speed_table(results)
    planned = study.cells("cheap", corpora, speeds)
    seeds: dict[tuple, set] = {}
    for cell in planned:
        seeds.setdefault((cell.corpus, cell.budget, cell.config.name), set()).add(cell.config.seed)
    assert len({cell.key for cell in planned}) == len(planned)
    two_minutes = set(study.SEEDS) | {study.TIEBREAK_SEED}
    for (_, budget, _), found in seeds.items():
        assert found == (two_minutes if budget in study.REPLICATED_BUDGETS else {study.SEED})
    record = {"corpus": "c", "budget": 120.0, "config": study.DEFAULT.name}
    done = {"a": {**record, "best_val_loss": 1.50}, "b": {**record, "best_val_loss": 1.51, "seed": 2},
            "c": {**record, "config": "other", "best_val_loss": 1.49}}
    losses = study.mean_losses(done)[("c", 120.0)]
    assert losses[study.DEFAULT.name] == pytest.approx((1.505, 2, 0.01)) and losses["other"] == (1.49, 1, 0.0)
    row = study._table_row("c", {"bytes": 10**6}, 120.0, study.DEFAULT, losses)
    assert "| 1.505 | other" in row and "| 1.490* |" in row and "+0.015" in row  # the best by its mean; one seed so far
    assert "*" not in study._table_row("c", {"bytes": 10**6}, 600.0, study.DEFAULT, {"other": (1.52, 1, 0.0)})


def test_the_study_trains_a_third_seed_only_where_the_first_two_split():
    study = _study()
    record = {"corpus": "c", "budget": 120.0, "config": study.DEFAULT.name}
    third = study.Cell("c", 120.0, replace(study.DEFAULT, seed=study.TIEBREAK_SEED), 7)

    def losses(*by_seed):
        return study.mean_losses({str(seed): {**record, "seed": seed, "best_val_loss": loss} for seed, loss in by_seed})

    one = losses((study.SEED, 1.50))
    assert study.undecided(third, one) and study.undecided(third, {})  # asked again once seed 2 is in
    agree, split = losses((study.SEED, 1.50), (2, 1.515)), losses((study.SEED, 1.50), (2, 1.53))
    assert not study.undecided(third, agree) and "0.015 apart" in study.trimmed(third, agree)
    assert not study.undecided(third, split) and study.trimmed(third, split) is None
    assert study.trimmed(replace(third, config=study.DEFAULT), split) is None  # the first seeds are never trimmed
    settled = losses((study.SEED, 1.50), (2, 1.53), (study.TIEBREAK_SEED, 1.51))[("c", 120.0)][study.DEFAULT.name]
    assert settled == pytest.approx((1.5133, 3, 0.03), abs=1e-4)  # the mean of all three; the spread of the first two
    row = study._table_row("c", {"bytes": 10**6}, 120.0, study.DEFAULT, split[("c", 120.0)])
    assert "| 1.515* |" in row  # two seeds that split want the third
    assert "*" not in study._table_row("c", {"bytes": 10**6}, 120.0, study.DEFAULT, {study.DEFAULT.name: settled})


def test_the_study_trims_32_streams_only_where_16_fell_clearly_behind_8():
    study = _study()
    wide = study.Cell("c", 600.0, replace(study.DEFAULT, batch=32), 60)
    names = [replace(study.DEFAULT, batch=b).name for b in (8, 16)]

    def losses(budget, sixteen, seeds=1):
        return {("c", budget): {names[0]: (1.40, seeds), names[1]: (sixteen, seeds)}}

    assert "16 streams made 1.430" in study.trimmed(wide, losses(600.0, 1.43))
    assert study.trimmed(wide, losses(600.0, 1.41)) is None  # near enough that 32 might still win
    assert study.trimmed(replace(wide, config=study.DEFAULT), losses(600.0, 1.43)) is None  # 8 streams: kept
    two_minutes = replace(wide, budget=120.0)
    assert study.trimmed(two_minutes, losses(120.0, 1.43)) is None  # not before every seed is in
    assert study.trimmed(two_minutes, losses(120.0, 1.43, seeds=len(study.SEEDS))) is not None
    assert study.undecided(wide, {}) and study.undecided(two_minutes, losses(120.0, 1.43))  # asked again later
    assert not study.undecided(wide, losses(600.0, 1.41))


def test_the_study_trims_more_dropout_only_where_the_two_steps_below_already_rise():
    study = _study()
    more = study.Cell("c", 600.0, replace(study.DEFAULT, dropout=0.2), 41)
    below = [replace(study.DEFAULT, dropout=d).name for d in (0.0, 0.1)]

    def losses(zero, one, budget=600.0, seeds=1):
        return {("c", budget): {below[0]: study.Measured(zero, seeds), below[1]: study.Measured(one, seeds)}}

    assert "dropout 0.1 made 1.175 against 0's 1.150" in study.trimmed(more, losses(1.15, 1.175))
    assert study.trimmed(more, losses(1.15, 1.16)) is None  # within the margin: it may still turn
    assert study.trimmed(more, losses(1.18, 1.15)) is None  # falling: more may be better
    assert study.trimmed(replace(more, priority=0), losses(1.15, 1.175)) is None  # the rule's own choice: kept
    short = replace(more, budget=120.0)
    assert study.trimmed(short, losses(1.15, 1.175, 120.0)) is None  # not before every seed is in
    assert study.trimmed(short, losses(1.15, 1.175, 120.0, seeds=len(study.SEEDS))) is not None


def test_the_study_trains_half_a_dropout_step_only_where_the_two_steps_around_it_differ():
    study = _study()
    half = study.Cell("c", 600.0, replace(study.DEFAULT, dropout=0.05), 20, half_step=True)
    steps = [replace(study.DEFAULT, dropout=d).name for d in (0.0, 0.1)]

    def losses(*measured):
        return {("c", 600.0): {name: study.Measured(loss, 1) for name, loss in zip(steps, measured)}}

    assert study.undecided(half, losses(1.30)) and study.trimmed(half, losses(1.30)) is None  # 0.1 not in yet
    near, far = losses(1.30, 1.315), losses(1.30, 1.33)
    assert "dropout 0 and 0.1 agree within 0.02" in study.trimmed(half, near) and not study.undecided(half, near)
    assert study.trimmed(half, far) is None and not study.undecided(half, far)
    assert study.trimmed(replace(half, config=study.DEFAULT), near) is None  # a whole step is never trimmed so
    shape = replace(half, half_step=False)  # a neighbour of a choice that itself sits at 0.05: trained
    assert study.trimmed(shape, near) is None and not study.undecided(shape, losses(1.30))
    results = study.read_results()
    corpora, speeds = study.corpora_info(results), study.speed_table(results)
    halves = {c.config.dropout for c in study.cells("cheap", corpora, speeds) if study._half_step(c.config)}
    assert halves and all(round(d * 100) % 10 == 5 for d in halves)


def test_a_study_claim_held_by_a_killed_process_is_free_even_before_it_is_reaped():
    study = _study()
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert study._alive(child.pid)
        child.kill()  # killed, not yet reaped: a zombie, which kill -0 still finds
        deadline = time.monotonic() + 10
        while study._alive(child.pid) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not study._alive(child.pid)
        assert child.poll() is not None  # and only now reaped
    finally:
        child.kill()
        child.wait()
    assert not study._alive(child.pid)


def test_the_study_trims_a_doubled_learning_rate_at_ten_minutes_only_where_it_lost_at_two():
    study = _study()
    faster = replace(study.DEFAULT, hidden=320, lr=0.004)
    cell = study.Cell("c", 600.0, faster, 71)
    short = [replace(study.DEFAULT, hidden=192, lr=lr).name for lr in (0.002, 0.004)]

    def losses(doubled, seeds=2):
        return {("c", 120.0): {short[0]: study.Measured(1.40, seeds), short[1]: study.Measured(doubled, seeds)}}

    assert study.undecided(cell, {}) and study.undecided(cell, losses(1.45, seeds=1))  # waits for every seed
    assert "lr 0.004 made 1.450 against 0.002's 1.400 at 2 minutes" in study.trimmed(cell, losses(1.45))
    assert study.trimmed(cell, losses(1.41)) is None and not study.undecided(cell, losses(1.41))
    assert study.trimmed(replace(cell, config=replace(faster, lr=0.001)), losses(1.45)) is None  # halved: kept
    assert not study.undecided(replace(cell, budget=120.0, config=replace(faster, hidden=192)), {})


def test_the_study_keeps_every_recorded_cell_when_its_grid_moves():
    study = _study()
    results = study.read_results()
    corpora, speeds = study.corpora_info(results), study.speed_table(results)
    records = {r["key"]: r for r in results if r["kind"] == "cell"}
    cells = dict((cell.key, steps) for cell, steps in study.recorded(results, corpora, speeds))
    assert set(cells) == set(records)  # each record's configuration and seed read back from its name
    outside = study.Config.from_name("2x64 b32 s128 d0.45 lr0.0005", seed=9)  # a cell no grid plans today
    assert (outside.layers, outside.hidden, outside.batch, outside.dropout, outside.lr) == (2, 64, 32, 0.45, 0.0005)
    cell = study.Cell("nietzsche", 600.0, outside, 0)
    assert cell.key not in {c.key for c, _ in study.planned(("cheap", "long"), corpora, speeds)}
    steps = study.cell_steps(cell, corpora["nietzsche"], speeds)
    record = {"kind": "cell", "key": cell.key, "corpus": "nietzsche", "budget": 600.0, "config": outside.name,
              "seed": 9, "steps": steps, "best_val_loss": 0.5, "val_chars": 60_088}
    losses = study.mean_losses(study.results_for(results + [record], study.recorded(results + [record], corpora, speeds)))
    assert losses[("nietzsche", 600.0)][outside.name].mean == 0.5
    assert "2x64 b32 d0.45 lr0.0005 | 0.500" in study.table(results + [record], corpora, speeds)  # the best measured


def test_the_study_trains_again_a_cell_scored_on_the_first_characters_of_a_long_validation_text():
    """Before evaluations spread their pieces, a cell scored the first 100,000 validation characters: on
    War and Peace (319,620) that record is trained again, on Nietzsche (all its 60,088) it stands."""
    study = _study()
    results = study.read_results()
    corpora, speeds = study.corpora_info(results), study.speed_table(results)
    config = study.Config.from_name("2x64 b32 s128 d0.45 lr0.0005", seed=9)  # a cell no grid plans
    records = {}
    for name, scored in (("warandpeace", 100_000), ("nietzsche", 60_088)):
        cell = study.Cell(name, 120.0, config, 0)
        records[name] = {"kind": "cell", "key": cell.key, "corpus": name, "budget": 120.0, "config": config.name,
                         "seed": 9, "steps": study.cell_steps(cell, corpora[name], speeds), "best_val_loss": 0.5,
                         "val_chars": scored}
    spread = {**records["warandpeace"], "val_sample": study.SPREAD, "best_val_loss": 0.6}
    everything = results + list(records.values())
    done = study.results_for(everything, study.recorded(everything, corpora, speeds))
    assert records["warandpeace"]["key"] not in done and done[records["nietzsche"]["key"]]["best_val_loss"] == 0.5
    done = study.results_for(everything + [spread], study.recorded(everything + [spread], corpora, speeds))
    assert done[spread["key"]] is spread


def test_the_study_trains_a_named_cell_at_the_seeds_its_budget_wants():
    study = _study()
    corpora = study.corpora_info(study.read_results())
    short = study.Cell.named("pydocs 120s 2x192 b8 s128 d0.05 lr0.002", corpora)
    assert [c.config.seed for c in short] == [study.SEED, 2, study.TIEBREAK_SEED]
    assert short[0].key == "pydocs 120s 2x192 b8 s128 d0.05 lr0.002" and short[1].key.endswith(" seed2")
    assert all(c.config == study.Config(2, 192, 0.05, seed=c.config.seed) for c in short)
    assert [c.key for c in study.Cell.named("warandpeace 600s 2x320 b8 s128 d0 lr0.002", corpora)] == [
        "warandpeace 600s 2x320 b8 s128 d0 lr0.002"]  # a longer budget: one seed
    assert [c.config.seed for c in study.Cell.named(short[1].key, corpora)] == [2]  # the seed it names
    for bad in ("pydocs 120s 2x192", "nowhere 120s 2x192 b8 s128 d0 lr0.002", "pydocs 2min 2x192 b8 s128 d0 lr0.002",
                "pydocs 120s 2x192 b8 s128 d0 lr0.002 seed2 more"):
        with pytest.raises(SystemExit, match="--cell"):
            study.Cell.named(bad, corpora)
    trained = subprocess.run([sys.executable, str(REPO / "scripts" / "sizing.py"), "plan", "--stage", "cheap", "--only",
                              "no such cell", "--cell", "pydocs 120s 2x64 b8 s128 d0.45 lr0.0005"],  # never trained
                             capture_output=True, text=True, timeout=120)
    listed = [line.split()[1:8] for line in trained.stdout.splitlines() if line.startswith("  p")]
    assert trained.returncode == 0 and len(listed) == 3 and trained.stdout.count("waits on other cells") == 1
    assert all(words[0] == "pydocs" and words[5] == "d0.45" for words in listed)
    assert "trimmed" not in trained.stdout  # what the fit asks for trains, wherever the grid would trim it


def test_a_refitted_rule_moves_the_grids_shapes_and_dropout_but_keeps_its_streams_and_learning_rates():
    study = _study()
    results = study.read_results()
    corpora, speeds = study.corpora_info(results), study.speed_table(results)
    with study.rule_constants(*study.GRID_CONSTANTS):
        before = {c.key: c for c in study.cells("cheap", corpora, speeds)}
    refit = (4.0, 15.0, ((5.0, 0.05), (15.0, 0.1), (50.0, 0.2), (math.inf, 0.3)))  # a floor of half a step
    with study.rule_constants(*refit):
        after = {c.key: c for c in study.cells("cheap", corpora, speeds)}
        chosen = study.rule_config(corpora["warandpeace"], 600.0, speeds)
    assert set(before) <= set(after)  # nothing the first grid planned is dropped
    assert chosen.dropout == 0.05 and after[f"warandpeace 600s {chosen.name}"].priority < 10  # the choice: kept
    added = [after[key].config for key in set(after) - set(before)]
    assert added and all(c.batch == 8 and c.lr == study.DEFAULT.lr for c in added)  # streams and lr: the centre's
    around = {c.name for c in study.neighbours(chosen, corpora["warandpeace"], 600.0, epochs=2.0)}
    assert {replace(chosen, dropout=d).name for d in (0.0, 0.1)} <= around  # the whole steps either side
    assert not any(study._half_step(replace(chosen, dropout=d)) for d in (0.0, 0.1))


def test_the_study_scores_every_cell_on_the_same_validation_text(tmp_path, monkeypatch):
    study = _study()
    calls, appended = [], []

    def charnn(command, code, threads):  # a run's files, as `charnn train` and `charnn eval --json` leave them
        calls.append(command)
        if command[0] == "eval":
            return json.dumps({"loss": 1.40, "chars": 319_620})
        run = Path(command[command.index("--out") + 1])
        run.mkdir(parents=True)
        (run / "best.pt").write_bytes(b"")
        (run / "metrics.jsonl").write_text(json.dumps({"kind": "eval", "step": 9, "val_loss": 1.5, "val_chars": 100_000}))
        return ""

    monkeypatch.setattr(study, "WORK", tmp_path)
    monkeypatch.setattr(study, "_charnn", charnn)
    monkeypatch.setattr(study, "append_result", appended.append)
    cheap = study.Cell("warandpeace", 600.0, study.DEFAULT, 0)
    record = study.train_cell(cheap, 1000, tmp_path / "corpus.txt", tmp_path, 1)
    assert calls[0][calls[0].index("--eval-chars") + 1] == str(study.STUDY_EVAL_CHARS) and len(calls) == 1
    assert study.current(record, 1000) and study.score(record) == 1.5 and "whole_val_loss" not in record
    # the plan's --eval-chars grows with the steps: a record scored on more text than the others is trained again
    assert not study.current({**record, "val_chars": 106_860}, 1000)
    assert not study.current({key: v for key, v in record.items() if key != "val_chars"}, 1000)
    # scored on the first 100,000 characters (before the pieces were spread): it stands only where that was
    # all of the validation text, which then had fewer characters
    first = {key: v for key, v in record.items() if key != "val_sample"}
    assert not study.current(first, 1000) and study.current({**first, "val_chars": 60_088}, 1000)

    hour = replace(cheap, budget=3600.0)
    record = study.train_cell(hour, 1000, tmp_path / "corpus.txt", tmp_path, 1)
    run = tmp_path / "runs" / hour.run_name(1000)
    assert calls[-1][:3] == ["eval", str(run), "--json"] and record["whole_val_chars"] == 319_620
    assert study.score(record) == 1.40 and study.current(record, 1000)  # best.pt on the whole validation text
    unscored = {key: v for key, v in record.items() if not key.startswith("whole_")}
    assert not study.current(unscored, 1000)
    study.rescore([unscored], tmp_path, 1)  # recorded before the whole text was scored: scored now, not retrained
    assert appended == [{**unscored, "whole_val_loss": 1.40, "whole_val_chars": 319_620}]
    study.rescore([{**unscored, "steps": 999}], tmp_path, 1)  # its run directory is gone: nothing to score
    assert len(appended) == 1


def test_the_study_resumes_only_runs_it_started_scoring_as_it_does(tmp_path, monkeypatch):
    study = _study()
    calls = []

    def charnn(command, code, threads):  # `charnn train`: a finished run's files (a fresh run, or a resumed one)
        calls.append(command)
        run = Path(command[command.index("--out") + 1] if "--out" in command else command[command.index("--resume") + 1])
        run.mkdir(parents=True, exist_ok=True)
        (run / "last.pt").write_bytes(b"")
        (run / "metrics.jsonl").write_text(json.dumps({"kind": "eval", "step": 9, "val_loss": 1.5, "val_chars": 100_000}))
        return ""

    monkeypatch.setattr(study, "WORK", tmp_path)
    monkeypatch.setattr(study, "_charnn", charnn)
    cell = study.Cell("warandpeace", 120.0, study.DEFAULT, 0)
    old = tmp_path / "runs" / cell.run_name(1000)  # an older study's finished run: scored on the first characters
    old.mkdir(parents=True)
    (old / "last.pt").write_bytes(b"")
    assert not study.resumable(cell, 1000)
    study.train_cell(cell, 1000, tmp_path / "corpus.txt", tmp_path, 1)
    assert "--overwrite" in calls[-1] and "--resume" not in calls[-1]  # trained again, not taken as finished
    assert study.resumable(cell, 1000)  # cut short now, it would resume
    study.train_cell(cell, 1000, tmp_path / "corpus.txt", tmp_path, 1)
    assert calls[-1][:2] == ["train", "--resume"]
    assert not study.resumable(cell, 999)  # planned for other steps: another run


def test_the_hour_long_stage_checks_the_choice_against_the_default_and_the_next_larger_shape():
    study = _study()
    results = study.read_results()
    corpora, speeds = study.corpora_info(results), study.speed_table(results)
    for name in study.LONG_CORPORA:
        configs = [c.config for c in study.cells("long", corpora, speeds) if c.corpus == name]
        chosen = study.rule_config(corpora[name], 3600.0, speeds)
        assert configs[:2] == [chosen, study.DEFAULT] and len(configs) == 5
        assert configs[3:] == study.hour_variants(chosen)
        larger = configs[2]
        assert larger.hidden * larger.layers > chosen.hidden * chosen.layers
        # configured as the rule would configure it: the dropout for the epochs it reads in the hour
        steps = study.cell_steps(study.Cell(name, 3600.0, larger, 0), corpora[name], speeds)
        epochs = steps * larger.shape.chars_per_step / study.situation(corpora[name], 3600.0).train_chars
        assert larger.dropout == sizing.dropout_for(epochs)
    with study.rule_constants(1e-3, 15.0, sizing.DROPOUT_BY_EPOCHS):  # the largest candidate: nothing wider
        top = study.rule_config(corpora["pystdlib"], 3600.0, speeds)
        assert study.wider(top, corpora["pystdlib"], 3600.0, speeds) is None


def test_the_hour_long_stage_tries_the_learning_rate_and_window_only_where_the_shapes_fall_short():
    study = _study()
    chosen = replace(study.DEFAULT, hidden=384, dropout=0.05)
    halved, longer = study.hour_variants(chosen)
    assert (halved.lr, halved.seq_len) == (chosen.lr / 2, chosen.seq_len)
    assert (longer.lr, longer.seq_len) == (chosen.lr, 2 * chosen.seq_len)

    def losses(*measured):
        names = [chosen.name, study.DEFAULT.name]
        return {("c", 3600.0): {n: study.Measured(loss, 1) for n, loss in zip(names, measured)}}

    for variant in (halved, longer):
        cell = study.Cell("c", 3600.0, variant, 11)
        assert study.undecided(cell, {}) and study.undecided(cell, losses(1.10))  # the default not in yet
        short = losses(1.10, 1.139)  # the choice 0.039 ahead: the shapes miss the hour's margin
        assert study.trimmed(cell, short) is None and not study.undecided(cell, short)
        met = losses(1.08, 1.139)
        assert "the choice made 1.080 against the default's 1.139" in study.trimmed(cell, met)
        assert study.trimmed(replace(cell, config=chosen, priority=1), met) is None  # the choice itself: kept


def test_stopping_the_study_stops_its_cells_and_starts_no_other(tmp_path, monkeypatch):
    study = _study()
    started, printed, ended = [], [], []
    sleeper = tmp_path / "python"  # stands in for `python -m charnn train`: a cell that trains until stopped
    sleeper.write_text("#!/bin/sh\nexec sleep 60\n")
    sleeper.chmod(0o755)
    monkeypatch.setattr(study.sys, "executable", str(sleeper))

    def pkill():  # `pkill -f "sizing.py run"`, once the cell's process runs (never after the study's handler)
        deadline = time.monotonic() + 60
        while not study.STOPPING.children and time.monotonic() < deadline:
            time.sleep(0.05)
        if study.STOPPING.children:
            os.kill(os.getpid(), signal.SIGTERM)

    def train_cell(cell, steps, corpus, code, threads):
        started.append(cell.key)
        threading.Thread(target=pkill).start()
        try:
            study._charnn(["train"], code, threads)
        except subprocess.CalledProcessError as err:
            ended.append(err.returncode)
            raise
        return {}

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("some text")
    digest = hashlib.sha256(corpus.read_bytes()).hexdigest()
    monkeypatch.setattr(study, "WORK", tmp_path)  # the cells' working directory
    monkeypatch.setattr(study, "corpus_path", lambda name: corpus)
    for name, fake in [("train_cell", train_cell), ("claim", lambda cell, steps: True), ("release", lambda cell, steps: None),
                       ("read_results", list), ("undecided", lambda cell, losses: False),
                       ("trimmed", lambda cell, losses: None), ("append_result", printed.append)]:
        monkeypatch.setattr(study, name, fake)
    cells = [(study.Cell("warandpeace", 120.0, replace(study.DEFAULT, seed=seed), 0), 100) for seed in (1, 2, 3)]
    before = signal.getsignal(signal.SIGTERM)
    study.run_cells(cells, cells, {"warandpeace": {"sha256": digest}}, 1, 1, tmp_path)
    assert started == [cells[0][0].key] and printed == []  # the running cell stopped, no other started, nothing recorded
    assert ended == [-signal.SIGTERM] and not study.STOPPING.children  # its process was terminated, not left training
    assert signal.getsignal(signal.SIGTERM) == before  # the study's handler lasts as long as its cells
