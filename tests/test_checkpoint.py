import json
import math
import pickle

import numpy as np
import pytest
import torch

from charnn import (CharnnError, TrainData, Trainer, TrainEvents, Vocab, load_checkpoint, model_from_checkpoint,
                    save_checkpoint, split_train_val)
from charnn.model.checkpoint import FORMAT, FORMAT_VERSION
from charnn.data.files import WriteFailed

from conftest import tiny_model_config, tiny_train_config

TEXT = ("It was the best of times, it was the worst of times, it was the age of wisdom, "
        "it was the age of foolishness.\n") * 40


def make_trainer(run_dir, **overrides) -> Trainer:
    vocab = Vocab.from_data(TEXT.encode())
    tokens, _ = vocab.encode_bytes(TEXT.encode())
    config = tiny_train_config(**overrides)
    train, val = split_train_val(tokens, config.val_frac)
    return Trainer(tiny_model_config(vocab.size, num_layers=2, dropout=0.2), config, TrainData(vocab, train, val), run_dir)


def train_losses(run_dir) -> list[tuple[int, float]]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [(r["step"], r["loss"]) for r in map(json.loads, lines) if r["kind"] == "train"]


def test_round_trip_gives_identical_logits(tmp_path):
    trainer = make_trainer(tmp_path / "run", max_steps=20)
    trainer.run()
    model, vocab = model_from_checkpoint(load_checkpoint(tmp_path / "run" / "last.pt"))
    ids = torch.as_tensor(vocab.encode("it was the age").astype(np.int64)).view(-1, 1)
    trainer.model.eval()
    with torch.no_grad():
        assert torch.equal(model(ids)[0], trainer.model(ids)[0])
    assert vocab == trainer.vocab
    assert (tmp_path / "run" / "best.pt").is_file()


def test_checkpoint_holds_only_plain_data(tmp_path):
    trainer = make_trainer(tmp_path / "run", max_steps=5)
    trainer.run()
    payload = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert payload["format"] == FORMAT and payload["format_version"] == FORMAT_VERSION
    assert {"model_config", "vocab", "model_state", "train_state", "train_config"} <= payload.keys()
    train_state = payload["train_state"]
    assert {"optimizer", "rng", "hidden", "progress"} <= train_state.keys()
    assert train_state["progress"]["step"] == 5


@pytest.mark.parametrize("stop_at", [7, 30, 37])  # mid-epoch, at the end of epoch 1, in epoch 2
def test_resume_continues_the_step_count_and_loss_curve_exactly(tmp_path, stop_at):
    straight = make_trainer(tmp_path / "straight", max_steps=45, log_every=1)
    straight.run()

    first = make_trainer(tmp_path / "resumed", max_steps=45, log_every=1)
    first.should_stop = lambda: "interrupted" if first.state.step >= stop_at else None  # as Ctrl-C would
    assert first.run().stop_reason == "interrupted"
    with open(tmp_path / "resumed" / "metrics.jsonl", "a") as f:  # logged after the checkpoint, then a crash
        f.write('{"kind": "train", "step": %d, "loss": 9.9}\n{"kind": "tr' % (stop_at + 1))
    second = make_trainer(tmp_path / "resumed", max_steps=45, log_every=1)
    second.restore(load_checkpoint(tmp_path / "resumed" / "last.pt"))
    assert second.state.step == stop_at
    second.run()

    assert second.state.step == 45 and second.state.epoch >= 1
    assert train_losses(tmp_path / "resumed") == train_losses(tmp_path / "straight")
    for name, tensor in straight.model.state_dict().items():
        assert torch.equal(tensor, second.model.state_dict()[name]), name


def test_failed_save_leaves_the_previous_checkpoints_intact(tmp_path, monkeypatch):
    trainer = make_trainer(tmp_path / "run", max_steps=5)
    trainer.run()
    run = tmp_path / "run"
    before = {name: (run / name).read_bytes() for name in ("last.pt", "best.pt")}

    def full_disk(obj, f, *args, **kwargs):
        f.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    for best in (False, True):  # one error naming the file, as charnn says it: see tests/test_full_disk.py
        with pytest.raises(WriteFailed, match=r"\.pt: cannot write \(No space left on device\)"):
            trainer.save(best=best)
    monkeypatch.undo()
    assert {name: (run / name).read_bytes() for name in before} == before
    assert load_checkpoint(run / "last.pt")["step"] == 5 and load_checkpoint(run / "best.pt")["step"] == 5
    assert [p.name for p in run.iterdir() if p.name.endswith(".tmp")] == []


def test_damaged_empty_and_foreign_files_are_clear_errors(tmp_path):
    trainer = make_trainer(tmp_path / "run", max_steps=3)
    trainer.run()
    good = (tmp_path / "run" / "last.pt").read_bytes()
    cases = {
        "truncated.pt": good[: len(good) // 2],
        "empty.pt": b"",
        "text.pt": b"just some text\n",
        "foreign.pt": None,
    }
    torch.save({"state_dict": {"w": torch.zeros(2)}}, tmp_path / "foreign.pt")
    for name, data in cases.items():
        if data is not None:
            (tmp_path / name).write_bytes(data)
        with pytest.raises(CharnnError) as err:
            load_checkpoint(tmp_path / name)
        assert name in str(err.value)


def test_newer_format_version_is_refused(tmp_path):
    save_checkpoint(tmp_path / "future.pt", {"model_config": {}, "vocab": {}, "model_state": {}})
    payload = torch.load(tmp_path / "future.pt", weights_only=True)
    payload["format_version"] = FORMAT_VERSION + 1
    torch.save(payload, tmp_path / "future.pt")
    with pytest.raises(CharnnError, match="newer"):
        load_checkpoint(tmp_path / "future.pt")


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_malicious_pickle_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    with open(tmp_path / "evil.pt", "wb") as f:
        torch.save({"format": FORMAT, "format_version": 1, "x": _Exploit(str(marker))}, f, pickle_module=pickle)
    with pytest.raises(CharnnError, match="refusing"):
        load_checkpoint(tmp_path / "evil.pt")
    assert not marker.exists()


def test_keep_holds_the_n_checkpoints_before_the_last_and_no_more(tmp_path):
    trainer = make_trainer(tmp_path / "run", max_steps=30, save_every_steps=5, keep=2)
    trainer.run()
    kept = sorted((tmp_path / "run" / "checkpoints").iterdir())
    assert [p.name for p in kept] == ["step-000000020.pt", "step-000000025.pt"]
    assert [load_checkpoint(p)["step"] for p in kept] == [20, 25]
    assert load_checkpoint(tmp_path / "run" / "last.pt")["step"] == 30

    resumed = make_trainer(tmp_path / "run", max_steps=40, save_every_steps=5, keep=1)
    resumed.restore(load_checkpoint(tmp_path / "run" / "last.pt"))
    resumed.run()
    assert [p.name for p in (tmp_path / "run" / "checkpoints").iterdir()] == ["step-000000035.pt"]


def test_without_keep_only_best_and_last_are_written(tmp_path):
    make_trainer(tmp_path / "run", max_steps=30, save_every_steps=5).run()
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["best.pt", "best.safetensors", "last.pt",
                                                                   "metrics.jsonl"]


def test_running_out_of_memory_is_a_clear_error_that_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    trainer = make_trainer(tmp_path / "run", max_steps=10, save_every_steps=5)
    real_step = trainer.train_step

    def step_that_runs_out(inputs, targets, resets=None):  # what CUDA raises when a batch does not fit
        if trainer.state.step == 7:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB. GPU 0 has ...")
        return real_step(inputs, targets, resets)

    monkeypatch.setattr(trainer, "train_step", step_that_runs_out)
    before = (tmp_path / "run").exists()
    with pytest.raises(CharnnError) as caught:
        trainer.run()
    message = str(caught.value)
    assert not before
    assert "out of memory (CUDA out of memory. Tried to allocate 20.00 GiB) on cpu at step 8" in message
    assert "last.pt" in message and "--batch-size" in message and "GPU 0" not in message
    assert load_checkpoint(tmp_path / "run" / "last.pt")["step"] == 5


class Warnings(TrainEvents):
    def __init__(self):
        self.messages = []

    def on_warning(self, snapshot, message):
        self.messages.append(message)


def poison_forward(trainer, monkeypatch, poisoned) -> None:
    """Make the model's forward pass return NaN logits on the calls (counted from 1) in `poisoned`.

    A real divergence is not reproducible on demand in a fast test; this is the same symptom."""
    real_forward, calls = trainer.model.forward, [0]

    def forward(idx, hidden=None, resets=None):
        logits, hidden = real_forward(idx, hidden, resets)
        calls[0] += 1
        return (logits * float("nan") if poisoned(calls[0]) else logits), hidden

    monkeypatch.setattr(trainer.model, "forward", forward)


def test_non_finite_steps_are_skipped_at_a_lower_rate_and_training_recovers(tmp_path, monkeypatch):
    trainer = make_trainer(tmp_path / "run", max_steps=20, log_every=1)
    trainer.events = Warnings()
    poison_forward(trainer, monkeypatch, lambda call: call in (8, 9))
    result = trainer.run()
    assert result.state.step == 20  # skipped windows are not counted as steps
    assert len(trainer.events.messages) == 2 and "non-finite" in trainer.events.messages[0]
    assert result.state.lr_scale == 0.25
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    assert all(math.isfinite(loss) for _, loss in train_losses(tmp_path / "run"))


def test_persistent_non_finite_loss_stops_training_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    trainer = make_trainer(tmp_path / "run", max_steps=30, save_every_steps=5)
    poison_forward(trainer, monkeypatch, lambda call: call > 7)
    with pytest.raises(CharnnError, match="diverged") as caught:
        trainer.run()
    assert "last.pt" in str(caught.value) and "--lr" in str(caught.value)
    payload = load_checkpoint(tmp_path / "run" / "last.pt")
    assert payload["step"] == 5
    assert all(torch.isfinite(t).all() for t in payload["model_state"].values())
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())  # no NaN step was ever applied


def test_non_finite_weights_are_never_saved_over_good_ones(tmp_path):
    trainer = make_trainer(tmp_path / "run", max_steps=5)
    trainer.run()
    before = (tmp_path / "run" / "last.pt").read_bytes()
    with torch.no_grad():
        next(trainer.model.parameters())[0, 0] = float("inf")
    with pytest.raises(CharnnError, match="non-finite"):
        trainer.save()
    assert (tmp_path / "run" / "last.pt").read_bytes() == before
