"""Any text at all, through the whole library: vocabulary, encoding, decoding, a few training steps,
a checkpoint and a sample. Arbitrary Unicode in character mode, arbitrary bytes in byte mode."""

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from charnn import (CharnnError, TrainData, Trainer, Vocab, generate, load_checkpoint, model_from_checkpoint,
                    split_train_val)

from conftest import tiny_model_config, tiny_train_config

PROPERTY = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def train_briefly(tmp_path_factory, vocab: Vocab, tokens: np.ndarray) -> Trainer:
    tokens = np.tile(tokens, -(-64 // len(tokens)))  # at least one window in each split, however short the text
    config = tiny_train_config(batch_size=2, seq_len=4, val_frac=0.5, max_steps=3, log_every=1, eval_every=3)
    train, val = split_train_val(tokens, config.val_frac)
    run_dir = tmp_path_factory.mktemp("run")
    trainer = Trainer(tiny_model_config(vocab.size, hidden_size=8, embed_size=4), config, TrainData(vocab, train, val),
                      run_dir)
    result = trainer.run()
    assert result.state.step == 3 and math.isfinite(result.state.best_val_loss)
    return trainer


def check_model_round_trip(trainer: Trainer, vocab: Vocab) -> None:
    model, loaded_vocab = model_from_checkpoint(load_checkpoint(trainer.run_dir / "last.pt"))
    assert loaded_vocab == vocab
    ids = np.concatenate(list(generate(model, [0], 10, seed=0)))
    assert ids.min() >= 0 and ids.max() < vocab.size
    vocab.decode_bytes(ids)  # every sampled id decodes


@PROPERTY
@given(text=st.text(min_size=1, max_size=200))
def test_any_unicode_text_round_trips_and_trains(tmp_path_factory, text):
    data = text.encode("utf-8")
    vocab = Vocab.from_data(data)
    assert list(vocab.chars) == sorted(set(text))
    tokens, unknown = vocab.encode_bytes(data)
    assert unknown == 0 and len(tokens) == len(text)
    assert vocab.decode_bytes(tokens) == data
    check_model_round_trip(train_briefly(tmp_path_factory, vocab, tokens), vocab)


@PROPERTY
@given(data=st.binary(min_size=1, max_size=200))
def test_any_bytes_round_trip_and_train_in_byte_mode(tmp_path_factory, data):
    vocab = Vocab.from_data(data, mode="byte")
    tokens, unknown = vocab.encode_bytes(data)
    assert unknown == 0 and vocab.decode_bytes(tokens) == data
    check_model_round_trip(train_briefly(tmp_path_factory, vocab, tokens), vocab)


@PROPERTY
@given(data=st.binary(min_size=1, max_size=200))
def test_any_bytes_in_character_mode_decode_or_say_to_use_bytes(data):
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        with pytest.raises(CharnnError, match="--bytes"):
            Vocab.from_data(data)
        return
    vocab = Vocab.from_data(data)
    assert vocab.decode(vocab.encode_bytes(data)[0]) == text
