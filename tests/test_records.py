"""--reset-on: a corpus of independent records, the state restarting at each delimiter, in training,
evaluation and sampling alike."""

import numpy as np
import pytest
import torch

from charnn import (CharnnError, CharRNN, SamplingConfig, TextGenerator, TrainData, Vocab, evaluate,
                    hidden_activations, split_train_val, trace_text)
from charnn.data.batches import reset_mask
from charnn.plan.request import delimiter_ids
from charnn.train.trainer import Trainer

from conftest import tiny_model_config, tiny_train_config


def test_reset_mask_marks_the_last_character_of_each_delimiter():
    tokens = torch.tensor([5, 1, 1, 2, 1, 3, 1, 1])
    assert reset_mask(tokens, (1,)).nonzero().flatten().tolist() == [1, 2, 4, 6, 7]
    assert reset_mask(tokens, (1, 1)).nonzero().flatten().tolist() == [2, 7]
    # a delimiter that began in the previous window is found through `before`
    window = torch.tensor([[1, 1], [4, 1]])  # (T, B): stream 0 reads 1 4, stream 1 reads 1 1
    before = torch.tensor([[1, 9]])
    assert reset_mask(window, (1, 1), before).tolist() == [[True, False], [False, True]]
    assert reset_mask(window, (1, 1)).tolist() == [[False, False], [False, True]]


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("training", [False, True])
def test_forward_with_resets_equals_zeroing_the_state_by_hand(cell, training):
    torch.manual_seed(0)
    model = CharRNN(tiny_model_config(10, cell=cell, num_layers=2, dropout=0.0))
    model.train(training)
    idx = torch.randint(10, (12, 3))
    resets = torch.zeros(12, 3, dtype=torch.bool)
    resets[4, 1] = resets[9, 0] = resets[9, 2] = True
    logits, final = model(idx, None, resets)
    # by hand: stream by stream, piece by piece, starting each piece after a reset from zero
    for b in range(3):
        cuts = [0] + resets[:, b].nonzero().flatten().tolist() + [12]
        hidden, pieces = None, []
        for start, end in zip(cuts, cuts[1:]):
            if start in resets[:, b].nonzero().flatten().tolist():
                hidden = None
            out, hidden = model(idx[start:end, b : b + 1], hidden)
            pieces.append(out)
        assert torch.allclose(torch.cat(pieces), logits[:, b : b + 1], atol=1e-5)


def records_corpus(n: int, seed: int) -> str:
    """Records 'k:kkkk.' on their own lines: a random key letter, then the key repeated."""
    rng = np.random.default_rng(seed)
    return "".join(f"{k}:{k * int(rng.integers(2, 7))}.\n" for k in rng.choice(list("abcd"), n))


def test_a_model_trained_with_resets_treats_each_record_on_its_own(tmp_path):
    text = records_corpus(1500, seed=0)
    vocab = Vocab.from_data(text.encode())
    tokens, _ = vocab.encode_bytes(text.encode())
    train, val = split_train_val(tokens, 0.1)
    model_config = tiny_model_config(vocab.size, reset_ids=delimiter_ids(vocab, "\n"))
    trainer = Trainer(model_config, tiny_train_config(max_steps=150, seq_len=24), TrainData(vocab, train, val),
                      tmp_path / "r")
    trainer.run()
    model = trainer.model.eval()
    # what follows a delimiter does not depend on anything before it
    after = []
    for history in ("a:aa.\nb:bbbbb.\n", "d:ddd.\n", "c:\n"):
        generator = TextGenerator(model)
        generator.feed(vocab.encode(history))
        after.append(generator.logits)
    np.testing.assert_allclose(after[0], after[1], atol=1e-6)
    np.testing.assert_allclose(after[0], after[2], atol=1e-6)
    # and it learned the records: the key is repeated (greedy continuation of a record's start)
    generator = TextGenerator(model, SamplingConfig(temperature=0))
    generator.feed(vocab.encode("\nc:"))
    assert vocab.decode([int(i[0]) for i in generator.sample(2)]) == "cc"


def test_evaluation_with_resets_scores_each_record_on_its_own(tmp_path):
    text = records_corpus(300, seed=1)
    vocab = Vocab.from_data(text.encode())
    tokens, _ = vocab.encode_bytes(text.encode())
    model = CharRNN(tiny_model_config(vocab.size, reset_ids=delimiter_ids(vocab, "\n"))).eval()
    newline = int(vocab.encode("\n")[0])
    starts = np.flatnonzero(tokens == newline)
    # the text from one delimiter to the last, and the same cut into records that share their delimiters
    whole = evaluate(model, tokens[starts[0] : starts[-1] + 1], num_streams=1)
    pieces = [tokens[a : b + 1] for a, b in zip(starts, starts[1:])]
    summed = sum(evaluate(model, piece, num_streams=1).loss * (len(piece) - 1) for piece in pieces)
    assert whole.chars == sum(len(p) - 1 for p in pieces)
    assert abs(whole.loss * whole.chars - summed) < 1e-4 * whole.chars
    # many streams with a short warm-up agree too: a reset makes the state exact wherever it happens
    streams = evaluate(model, tokens[starts[0] : starts[-1] + 1], num_streams=16, burn_in=16)
    assert abs(streams.loss - whole.loss) < 1e-5


def test_the_delimiter_must_be_in_the_vocabulary():
    vocab = Vocab.from_data(b"ab\nab\n")
    assert delimiter_ids(vocab, "\n") == (int(vocab.encode("\n")[0]),)
    with pytest.raises(CharnnError, match="--reset-on"):
        delimiter_ids(vocab, "%%")


def test_pictures_of_a_records_model_apply_the_same_resets():
    text = records_corpus(200, seed=2)
    vocab = Vocab.from_data(text.encode())
    tokens, _ = vocab.encode_bytes(text.encode())
    torch.manual_seed(1)
    model = CharRNN(tiny_model_config(vocab.size, num_layers=2, reset_ids=delimiter_ids(vocab, "\n"))).eval()
    trace = trace_text(model, tokens, window=64)
    assert float(np.nanmean(trace.losses)) == pytest.approx(evaluate(model, tokens, num_streams=1).loss, abs=1e-5)
    # a unit's activation right after a delimiter is the same whatever came before
    activations = hidden_activations(model, tokens)
    after_newline = activations[:, tokens == vocab.encode("\n")[0]]
    assert np.allclose(after_newline, after_newline[:, :1], atol=1e-6)
