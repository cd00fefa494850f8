"""The model learns what it should: a memorised text, and a dependency longer than one BPTT window."""

import random

import numpy as np
import torch

from charnn import TrainData, Trainer, Vocab, split_train_val

from conftest import tiny_model_config, tiny_train_config


def train_on(text: str, tmp_path, model_overrides=None, **train_overrides) -> tuple[Trainer, np.ndarray]:
    vocab = Vocab.from_data(text.encode("utf-8"))
    tokens, _ = vocab.encode_bytes(text.encode("utf-8"))
    config = tiny_train_config(**train_overrides)
    train, val = split_train_val(tokens, config.val_frac)
    trainer = Trainer(tiny_model_config(vocab.size, **(model_overrides or {})), config, TrainData(vocab, train, val), tmp_path / "run")
    trainer.run()
    return trainer, val


def test_memorises_a_small_deterministic_text(tmp_path):
    text = "the quick brown fox jumps over the lazy dog.\n" * 120
    trainer, _ = train_on(text, tmp_path, max_steps=250, val_frac=0.1)
    assert trainer.state.best_val_loss < 0.05  # nats/char: next character is certain given context


def blocks_text(n_blocks: int, seed: int, shortest: int, longest: int) -> str:
    """Blocks 'A.......=A': a random letter, a run of dots, '=', and the first letter again.

    Short blocks fit in one window and teach the model to hold the letter; in long
    ones the letter and its repeat are more than two windows apart, so only a hidden
    state carried across windows can link them.
    """
    rng = random.Random(seed)
    return "".join(c + "." * rng.randint(shortest, longest) + "=" + c for c in (rng.choice("ABCD") for _ in range(n_blocks)))


def repeat_accuracy(trainer: Trainer, text: str, reset_every: int | None = None) -> float:
    """How often greedy prediction after '=' is the block's letter, reading the text as one stream
    (state carried throughout) or with the state reset every `reset_every` characters."""
    ids = torch.as_tensor(trainer.vocab.encode(text).astype(np.int64)).view(-1, 1)
    model = trainer.model.eval()
    step = reset_every or len(ids)
    with torch.no_grad():
        logits = torch.cat([model(ids[:-1][s : s + step])[0] for s in range(0, len(ids) - 1, step)])
    predicted = logits.argmax(-1).view(-1)
    positions = [i for i, c in enumerate(text[:-1]) if c == "="]
    return sum(predicted[p].item() == ids[p + 1, 0].item() for p in positions) / len(positions)


def test_state_carried_across_windows_is_what_lets_it_remember(tmp_path):
    seq_len = 8
    text = blocks_text(3000, seed=0, shortest=1, longest=24)
    long_blocks = blocks_text(300, seed=1, shortest=2 * seq_len + 1, longest=24)
    common = dict(max_steps=1200, seq_len=seq_len, batch_size=16, val_frac=0.05, lr=1e-2)
    carried, _ = train_on(text, tmp_path / "carry", model_overrides={"hidden_size": 48}, **common)
    reset, _ = train_on(text, tmp_path / "reset", model_overrides={"hidden_size": 48}, carry_state=False, **common)
    chance = 0.25
    assert repeat_accuracy(carried, long_blocks) > 0.9
    # the same model, its state wiped every window, is back to chance: the memory is in the carry
    assert repeat_accuracy(carried, long_blocks, reset_every=seq_len) < chance + 0.15
    # and a model trained with the state reset every window never learns to use it
    assert repeat_accuracy(reset, long_blocks, reset_every=seq_len) < chance + 0.15
    assert repeat_accuracy(reset, long_blocks) < 0.5
