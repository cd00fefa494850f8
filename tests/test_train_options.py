"""Training options that watch the run: early stopping (--patience) and samples while training
(--sample-every), which must leave the training itself exactly as it would have been."""

import json
from dataclasses import replace

import torch

from charnn import EvalResult, TrainData, TrainEvents, Trainer, TrainHooks, Vocab, split_train_val
from charnn.train.trainer import ReplanCheck

from conftest import tiny_model_config, tiny_train_config

TEXT = "the quick brown fox jumps over the lazy dog.\n" * 60


def make_trainer(tmp_path, name, events=None, **overrides) -> Trainer:
    vocab = Vocab.from_data(TEXT.encode())
    tokens, _ = vocab.encode_bytes(TEXT.encode())
    train, val = split_train_val(tokens, 0.1)
    return Trainer(tiny_model_config(vocab.size, dropout=0.1), tiny_train_config(**overrides),
                   TrainData(vocab, train, val), tmp_path / name, TrainHooks(events=events))


def test_patience_stops_after_that_many_evaluations_without_a_new_best(tmp_path):
    trainer = make_trainer(tmp_path, "flat", max_steps=1000, eval_every=10, patience=3)
    losses = iter([2.0, 1.5, 1.6, 1.5, 1.4, 1.45, 1.41, 1.4, 1.3])
    trainer.evaluate = lambda: EvalResult(loss=next(losses), chars=100)
    result = trainer.run()
    # bests at evaluations 1, 2 and 5; then 1.45, 1.41, 1.4 are three without a new best
    assert result.stop_reason == "patience"
    assert result.state.step == 80 and result.state.best_val_loss == 1.4


class Samples(TrainEvents):
    def __init__(self):
        self.texts = []

    def on_sample(self, snapshot, text):
        self.texts.append((snapshot.step, text))


def test_samples_while_training_leave_the_training_unchanged(tmp_path):
    plain = make_trainer(tmp_path, "plain", max_steps=40)
    plain.run()
    events = Samples()
    watched = make_trainer(tmp_path, "watched", events=events, max_steps=40, sample_every=15)
    watched.run()
    assert [step for step, _ in events.texts] == [15, 30]
    assert all(len(text) == 200 and set(text) <= set(TEXT) for _, text in events.texts)
    assert watched.model.training
    for a, b in zip(plain.model.state_dict().values(), watched.model.state_dict().values()):
        assert torch.equal(a, b)


class PlanAgainAt:
    """A planning.Replanner stand-in: at `step`, a new plan for a wider model and `max_steps` steps."""

    def __init__(self, trainer, step: int, hidden_size: int, max_steps: int):
        from charnn.plan import sizing  # noqa: PLC0415
        from charnn.plan.planning import Replan  # noqa: PLC0415

        self.trainer, self.step, self.elapsed = trainer, step, None
        model_config = tiny_model_config(trainer.vocab.size, dropout=0.1, hidden_size=hidden_size)
        situation = sizing.Situation(train_chars=2000, vocab_size=trainer.vocab.size, budget=sizing.Budget(steps=max_steps))
        plan = replace(sizing.choose(situation), replanned={"elapsed": 60.0, "ratio": 0.3, "first": "the first"})
        self.replan = Replan(plan, model_config, tiny_train_config(max_steps=max_steps, eval_every=10))

    def due(self, elapsed):
        return self.trainer.state.step >= self.step

    def decide(self, elapsed, seen):
        self.elapsed = elapsed
        return self.replan


def test_a_run_planned_again_for_another_model_starts_that_model_afresh_and_says_so(tmp_path):
    trainer = make_trainer(tmp_path, "replanned", max_steps=200, eval_every=10)
    trainer.replanning = ReplanCheck(PlanAgainAt(trainer, 25, hidden_size=48, max_steps=40))
    result = trainer.run()
    run = tmp_path / "replanned"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert records[0]["kind"] == "plan" and records[0]["first"] == "the first"  # the first model's lines are gone
    assert max(r["step"] for r in records) == 40 == result.state.step
    assert trainer.replanning.replanner is None and result.state.elapsed > 0
    best = torch.load(run / "best.pt", weights_only=True)
    assert best["model_config"]["hidden_size"] == 48 and best["step"] <= 40
    config = json.loads((run / "config.json").read_text())
    assert config["model"]["hidden_size"] == 48 and config["sizing"]["replanned"]["ratio"] == 0.3
    assert config["train"]["max_steps"] == 40 and config["parameters"] == trainer.parameters


def test_a_run_planned_again_for_the_same_model_only_changes_its_steps(tmp_path):
    trainer = make_trainer(tmp_path, "longer", max_steps=30, eval_every=10)
    first = trainer.model
    replanner = PlanAgainAt(trainer, 22, hidden_size=32, max_steps=50)
    replanner.replan = replace(replanner.replan, model_config=trainer.model_config)
    trainer.replanning = ReplanCheck(replanner)
    result = trainer.run()
    assert trainer.model is first and result.state.step == 50
    records = [json.loads(line) for line in (tmp_path / "longer" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "plan"] == [22] and records[0]["kind"] != "plan"
