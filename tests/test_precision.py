"""Mixed precision (--precision): what auto chooses under injected timings, float32 evaluation whatever
the training precision, exact resume in bf16 (tests/test_resume.py), the fp16 gradient scaler's logic on
the CPU, and the refusals."""

import json
from contextlib import nullcontext

import pytest
import torch

from charnn import TrainData, Trainer, Vocab, evaluate, split_train_val
from charnn.model import precision as precision_module
from charnn.plan import speed
from charnn.errors import CharnnError
from charnn.model.precision import Precision, check_precision
from charnn.plan.shapes import Shape
from conftest import SHAKESPEARE, TINY, run_cli, tiny_model_config, tiny_train_config

TEXT = SHAKESPEARE.read_bytes()[:20_000]


def make_trainer(tmp_path, **overrides) -> Trainer:
    vocab = Vocab.from_data(TEXT)
    tokens, _ = vocab.encode_bytes(TEXT)
    train, val = split_train_val(tokens, 0.1)
    return Trainer(tiny_model_config(vocab.size, dropout=0.1), tiny_train_config(**overrides), TrainData(vocab, train, val),
                   tmp_path / "run")


def fake_timings(monkeypatch, rates: dict[str, float], mixed: str | None = "bf16"):
    """time_training at `rates` (chars/s by precision), and a device whose mixed precision is `mixed`."""

    def time_training(shape, vocab_size, device, seconds=1.0, warmup=2, threads=None, give_up=None, precision="fp32"):
        return speed.Timing(shape, shape.chars_per_step / rates[precision], 3)

    monkeypatch.setattr(speed, "time_training", time_training)
    monkeypatch.setattr(speed, "mixed_candidate", lambda device: mixed)


@pytest.mark.parametrize("rates, mixed, chosen", [
    ({"fp32": 20_000, "bf16": 27_000}, "bf16", "bf16"),  # 1.35x: taken
    ({"fp32": 20_000, "bf16": 22_000}, "bf16", "fp32"),  # 1.10x: not worth the rounding
    ({"fp32": 20_000, "bf16": 60_000}, None, "fp32"),  # no native bf16: never timed, never taken
])
def test_auto_takes_the_mixed_precision_only_where_native_and_fast_enough(monkeypatch, rates, mixed, chosen):
    fake_timings(monkeypatch, rates, mixed)
    name, why = speed.choose_precision("auto", Shape(2, 256, 8, 128), 65, torch.device("cpu"))
    assert name == chosen
    assert ("1.15x needed" in why) == (mixed is not None)


def test_a_precision_asked_for_is_kept_and_fp16_needs_a_gpu():
    assert speed.choose_precision("bf16", Shape(2, 256, 8, 128), 65, torch.device("cpu"))[0] == "bf16"
    with pytest.raises(CharnnError, match="fp16 needs a CUDA GPU"):
        check_precision("fp16", torch.device("cpu"))
    with pytest.raises(CharnnError, match="--precision must be one of"):
        check_precision("fp8", torch.device("cpu"))


def test_native_bf16_is_read_from_the_cpus_flags(monkeypatch):
    monkeypatch.setattr(precision_module.platform, "machine", lambda: "x86_64")
    for flags, native in ((set(), False), ({"avx512f", "avx512_bf16"}, True), ({"amx_bf16"}, True)):
        monkeypatch.setattr(precision_module, "cpu_flags", lambda flags=flags: flags)
        assert precision_module.native_bf16(torch.device("cpu")) is native
    monkeypatch.setattr(precision_module.platform, "machine", lambda: "aarch64")
    monkeypatch.setattr(precision_module, "cpu_flags", lambda: {"fp", "asimd", "bf16"})
    assert precision_module.native_bf16(torch.device("cpu"))


def test_a_bf16_run_keeps_float32_weights_state_and_evaluates_in_float32(tmp_path):
    trainer = make_trainer(tmp_path, max_steps=30, eval_every=30, precision="bf16")
    result = trainer.run()
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())
    assert all(h.dtype == torch.float32 for h in trainer.learner.hidden)  # the state carried between windows
    payload = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert all(t.dtype == torch.float32 for t in payload["model_state"].values())
    assert payload["train_config"]["precision"] == "bf16"
    # the figure best.pt was chosen by is float32 arithmetic, as `charnn eval` gives it
    assert result.state.best_val_loss == pytest.approx(evaluate(trainer.model, trainer.validation.tokens).loss, abs=1e-9)


def test_bf16_learns_what_fp32_learns(tmp_path):
    losses = {}
    for precision in ("fp32", "bf16"):
        trainer = make_trainer(tmp_path / precision, max_steps=200, eval_every=200, precision=precision)
        losses[precision] = trainer.run().state.best_val_loss
    assert losses["bf16"] < 3.0 and abs(losses["bf16"] - losses["fp32"]) < 0.05


class ScaledFloat32(Precision):
    """fp16's gradient scaler around a float32 forward pass: the scaler's logic, on a CPU without fp16 LSTMs."""

    def autocast(self, device):
        return nullcontext()


def test_in_fp16_a_non_finite_step_is_the_scalers_to_handle(tmp_path):
    trainer = make_trainer(tmp_path, max_steps=20, eval_every=20)
    learner = trainer.learner
    learner.precision, learner.scaler = ScaledFloat32("fp16"), torch.amp.GradScaler("cpu", init_scale=2.0**8)
    forward, calls = learner.net.forward, []

    def overflowing(*args):
        logits, hidden = forward(*args)
        calls.append(1)
        return (logits * float("inf"), hidden) if len(calls) in (5, 6) else (logits, hidden)

    learner.net.forward = overflowing
    result = trainer.run()
    assert learner.scaler.get_scale() == 2.0**6  # halved twice, no learning rate lost, no warning
    assert result.state.lr_scale == 1.0 and result.state.step == 20 and result.state.window == 22
    saved = torch.load(tmp_path / "run" / "last.pt", weights_only=True)["train_state"]["scaler"]
    assert saved["scale"] == 2.0**6  # resumes with the scale it reached


def test_resume_keeps_the_runs_precision_and_refuses_another(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_bytes(TEXT)
    run = tmp_path / "run"
    assert run_cli("train", corpus, *TINY, "--out", run).returncode == 0  # TINY trains in fp32
    refused = run_cli("train", "--resume", run, "--precision", "bf16", "--max-steps", "40")
    assert refused.returncode == 1 and b"the run trains in fp32" in refused.stderr
    assert run_cli("train", "--resume", run, "--precision", "auto", "--max-steps", "40").returncode == 0
    assert json.loads((run / "config.json").read_text())["train"]["precision"] == "fp32"


def test_a_run_from_before_precision_resumes_in_float32(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_bytes(TEXT)
    run = tmp_path / "run"
    assert run_cli("train", corpus, *TINY, "--out", run).returncode == 0
    payload = torch.load(run / "last.pt", weights_only=True)
    del payload["train_config"]["precision"]  # as charnn wrote it before --precision
    torch.save(payload, run / "last.pt")
    resumed = run_cli("train", "--resume", run, "--max-steps", "40")
    assert resumed.returncode == 0 and b" in fp32:" in resumed.stderr, resumed.stderr.decode()


def test_a_new_run_says_its_precision_and_why(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_bytes(TEXT)
    result = run_cli("train", corpus, *TINY[:-2], "--precision", "bf16", "--out", tmp_path / "run")
    assert result.returncode == 0, result.stderr.decode()
    assert b" in bf16:" in result.stderr
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["train"]["precision"] == "bf16" and config["precision"] == {"chosen": "bf16", "why": "asked for"}
