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


def one_by_one(choice, tokens: list[int]) -> str:
    text = ""
    for token in tokens:
        if choice.finish_reason:
            break
        text += choice.add(token)
    return text


@settings(max_examples=300, deadline=None)
@given(tokens=st.lists(st.integers(0, 4), max_size=60), stops=st.lists(st.text("abcde", min_size=1, max_size=4),
                                                                     max_size=2),
       max_tokens=st.integers(1, 80), chunks=st.lists(st.integers(1, 9), min_size=1, max_size=8))
def test_a_choices_text_is_the_same_whatever_chunks_of_steps_hand_it_out(tokens, stops, max_tokens, chunks):
    """A server hands a choice's characters out a chunk of steps at a time: the text, where it ends and why
    are those of one character at a time, stop strings straddling chunks included."""
    from charnn.generate.stops import ChoiceText

    vocab = Vocab(chars="abcde")
    alone = ChoiceText(vocab, max_tokens, stops)
    expected = one_by_one(alone, tokens)
    chunked, text, start = ChoiceText(vocab, max_tokens, stops), "", 0
    for size in chunks * len(tokens):
        if chunked.finish_reason or start >= len(tokens):
            break
        text += chunked.extend(tokens[start : start + size])
        start += size
    assert (text, chunked.finish_reason, chunked.generated) == (expected, alone.finish_reason, alone.generated)


@settings(max_examples=100, deadline=None)
@given(data=st.binary(max_size=40), max_tokens=st.integers(1, 50), size=st.integers(1, 9))
def test_a_byte_models_choice_decodes_the_same_in_chunks(data, max_tokens, size):
    """Bytes of a character split across chunks decode as they do one at a time (invalid ones as U+FFFD)."""
    from charnn.generate.stops import ChoiceText

    vocab = Vocab.from_data(b"", mode="byte")
    alone, chunked = ChoiceText(vocab, max_tokens, ()), ChoiceText(vocab, max_tokens, ())
    expected = one_by_one(alone, list(data))
    text = "".join(chunked.extend(list(data[start : start + size])) for start in range(0, len(data), size)
                   if not chunked.finish_reason)
    assert (text, chunked.finish_reason) == (expected, alone.finish_reason)
