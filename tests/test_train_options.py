"""Training options that watch the run: early stopping (--patience) and samples while training
(--sample-every), which must leave the training itself exactly as it would have been."""

import torch

from charnn import EvalResult, TrainData, TrainEvents, Trainer, Vocab, split_train_val

from conftest import tiny_model_config, tiny_train_config

TEXT = "the quick brown fox jumps over the lazy dog.\n" * 60


def make_trainer(tmp_path, name, events=None, **overrides) -> Trainer:
    vocab = Vocab.from_data(TEXT.encode())
    tokens, _ = vocab.encode_bytes(TEXT.encode())
    train, val = split_train_val(tokens, 0.1)
    return Trainer(tiny_model_config(vocab.size, dropout=0.1), tiny_train_config(**overrides),
                   TrainData(vocab, train, val), tmp_path / name, events=events)


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
