"""--size: the rule's choices for given corpus sizes, budgets and device speeds (fixed speed tables, no
timing), options the user gives are never overridden, --size small is today's defaults, --dry-run."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from charnn import sizing
from charnn.config import ModelConfig, TrainConfig
from charnn.sizing import Budget, Shape, Situation, SpeedTable, choose
from conftest import TINY, run_cli

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


def test_tiny_shakespeare_at_ten_minutes_keeps_the_measured_default():
    plan = choose(situation(1.1 * MB, 600), CPU)
    assert (plan.shape.num_layers, plan.shape.hidden_size, plan.shape.batch_size, plan.shape.seq_len) == (2, 256, 8, 128)
    assert plan.model["dropout"] == 0.1 and plan.train["lr"] == 2e-3
    assert 8000 < plan.steps < 9000  # ten minutes at 15k characters a second, evaluations included
    assert plan.seconds == pytest.approx(600, rel=0.01)


def test_a_small_corpus_gets_a_small_model_with_more_dropout():
    small = choose(situation(0.2 * MB, 600), CPU)
    default = sizing.default_shape().parameters(80)
    assert width(small) < default / 2  # not five times more parameters than characters
    assert small.model["dropout"] > ModelConfig.dropout  # it reads the text dozens of times


def test_a_long_budget_on_a_large_corpus_gets_a_larger_model():
    plan = choose(situation(24 * MB, 3600), CPU)
    assert width(plan) > sizing.default_shape().parameters(80)
    assert plan.epochs < 2 and plan.model["dropout"] == 0.1


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


@pytest.mark.parametrize("corpus,low,high", [(0.2 * MB, 120, 120), (1.1 * MB, 600, 800), (3.2 * MB, 1800, 2400),
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
    assert plan.train == {"batch_size": train.batch_size, "seq_len": train.seq_len, "lr": train.lr}
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
    """speed.py's clock and timings, faked: each timing of a shape takes `cost` seconds of this clock."""

    def __init__(self, monkeypatch, speeds, cost: float):
        from charnn import speed  # noqa: PLC0415

        self.now, self.timed, self.speeds, self.cost = 0.0, [], speeds, cost
        monkeypatch.setattr(speed.time, "perf_counter", lambda: self.now)
        monkeypatch.setattr(speed, "time_training", self.time_training)

    def time_training(self, shape, vocab_size, device, seconds=1.0, warmup=2):
        from charnn.speed import Timing  # noqa: PLC0415

        self.now += self.cost
        self.timed.append(shape.name)
        return Timing(shape, shape.chars_per_step / self.speeds.chars_per_sec(shape), 3)


def test_on_a_cpu_one_timing_scales_the_measured_table(monkeypatch):
    import torch  # noqa: PLC0415

    from charnn.speed import MeasuredSpeeds  # noqa: PLC0415

    clock = FakeClock(monkeypatch, replace(CPU, factor=0.5), cost=0.5)
    speeds = MeasuredSpeeds(torch.device("cpu"), 80, allowance=2.4)
    plan = choose(situation(1.1 * MB, 600), speeds)
    assert clock.timed[1:] == ["2x256 b8 s128"]  # a warm-up step, then the reference shape only
    assert speeds.chars_per_sec(Shape(2, 384, 8, 128)) == pytest.approx(CPU.chars_per_sec(Shape(2, 384, 8, 128)) / 2)
    assert width(plan) < width(choose(situation(1.1 * MB, 600), CPU))  # a machine half as fast: a smaller model


def test_on_a_gpu_the_shapes_are_timed_within_the_allowance(monkeypatch):
    import torch  # noqa: PLC0415

    from charnn.speed import MeasuredSpeeds  # noqa: PLC0415

    clock = FakeClock(monkeypatch, FakeGPU(), cost=1.0)
    speeds = MeasuredSpeeds(torch.device("cuda"), 80, allowance=12.0)  # 2% of ten minutes
    plan = choose(situation(24 * MB, 600), speeds)
    assert len(clock.timed) <= 1 + 12 + 1  # the warm-up, then timings until the allowance is spent
    assert plan.shape.batch_size > 8 and width(plan) > width(choose(situation(24 * MB, 600), CPU))
