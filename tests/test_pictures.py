"""Looking inside a model: per-character surprise, per-layer hidden states, and finding the unit that
tracks a feature of the text."""

import math
import random

import numpy as np
import pytest
import torch

from charnn import (CharRNN, Trainer, Vocab, evaluate, find_neurons, hidden_activations, split_train_val,
                    text_features, trace_text)

from conftest import tiny_model_config, tiny_train_config

LN2 = math.log(2)


def quoted_text(spans: int, seed: int) -> str:
    """Lowercase words outside quotes, uppercase inside: to predict a letter's case after a space,
    the model must remember whether a '"' has opened a quote, however far back."""
    rng = random.Random(seed)

    def words(letters: str, low: int, high: int) -> list[str]:
        return ["".join(rng.choice(letters) for _ in range(rng.randint(1, 5))) for _ in range(rng.randint(low, high))]

    return " ".join(" ".join(words("abcdefgh", 1, 4)) + ' "' + " ".join(words("ABCDEFGH", 1, 4)) + '"'
                    for _ in range(spans))


@pytest.fixture(scope="module")
def quotes(tmp_path_factory):
    """A tiny LSTM trained for about two seconds on `quoted_text`, with its run directory."""
    root = tmp_path_factory.mktemp("pictures")
    torch.manual_seed(0)
    text = quoted_text(1000, seed=0)
    vocab = Vocab.from_data(text.encode())
    tokens, _ = vocab.encode_bytes(text.encode())
    config = tiny_train_config(max_steps=120, seq_len=32, val_frac=0.1)
    train, val = split_train_val(tokens, config.val_frac)
    trainer = Trainer(tiny_model_config(vocab.size, hidden_size=16), config, vocab, train, val, root / "run")
    trainer.run()
    held_out = root / "held_out.txt"
    held_out.write_text(quoted_text(60, seed=1))
    return {"model": trainer.model.eval(), "vocab": vocab, "val": val, "run": root / "run", "text": held_out}


# --- the library -------------------------------------------------------------------------------


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_per_character_losses_and_activations_agree_with_the_model(cell):
    model = CharRNN(tiny_model_config(11, cell=cell, num_layers=2, hidden_size=12)).eval()
    tokens = np.random.default_rng(0).integers(0, 11, size=600).astype(np.uint8)
    trace = trace_text(model, tokens, neuron=(1, 5), window=100)
    assert np.isnan(trace.losses[0]) and not np.isnan(trace.losses[1:]).any()
    assert abs(trace.mean_loss - evaluate(model, tokens, num_streams=1).loss) < 1e-4
    # the best guess for a character is the one the model's own forward pass ranks first
    ids = torch.as_tensor(tokens.astype(np.int64)).view(-1, 1)
    with torch.no_grad():
        logits, _ = model(ids[:-1])
        last_layer, _ = model.rnn(model.embedding(ids))
    assert (trace.top_ids[1:, 0] == logits[:, 0].argmax(-1).numpy()).all()
    assert (np.diff(trace.top_probs[1:], axis=1) <= 0).all() and (trace.top_probs[1:, 0] <= 1).all()
    states = hidden_activations(model, tokens, window=100)  # (layers, N, hidden)
    assert states.shape == (2, 600, 12)
    assert np.allclose(states[1], last_layer[:, 0].numpy(), atol=1e-6)
    assert np.allclose(trace.activations, states[1, :, 5])


def test_text_features_on_a_small_example():
    text = 'ab "c (d" e)\n  x(y\n\n"q ) )(z'
    features = text_features(np.array([ord(c) for c in text]))
    digits = {name: "".join(str(int(v) % 10) for v in values) for name, values in features.items()}
    assert digits["inside_quotes"] == "0001111100000000000011111111"  # restarts at the blank line
    assert digits["column"] == "1234567890120123450012345678"  # characters read on the line so far
    assert digits["indentation"] == "0000000000000122220000000000"
    assert digits["inside_parens"] == "0000001111100000111111100011"  # a stray ')' does not go below 0


def test_find_neurons_finds_the_unit_that_tracks_quotes(quotes):
    trained = find_neurons(quotes["model"], quotes["vocab"], quotes["val"])
    torch.manual_seed(0)
    untrained = find_neurons(CharRNN(quotes["model"].config).eval(), quotes["vocab"], quotes["val"])
    best = trained.best["inside_quotes"][0]
    # an untrained unit already reacts to the case of the letter it reads; only a trained one holds the state
    chance = abs(untrained.best["inside_quotes"][0].correlation)
    assert abs(best.correlation) > 0.85 and abs(best.correlation) > chance + 0.25, (best, chance)
    assert trained.constant == ("indentation", "inside_parens") and trained.best["inside_parens"] == []
    again = find_neurons(quotes["model"], quotes["vocab"], quotes["val"])
    assert again == trained  # deterministic
