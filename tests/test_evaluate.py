import math

import numpy as np
import torch
import torch.nn.functional as F

from charnn import CharRNN, evaluate

from conftest import tiny_model_config


def single_stream_loss(model, tokens) -> float:
    ids = torch.as_tensor(tokens.astype(np.int64)).view(-1, 1)
    with torch.no_grad():
        logits, _ = model(ids[:-1])
    return F.cross_entropy(logits.view(-1, logits.shape[-1]), ids[1:].view(-1)).item()


def test_scores_every_character_after_the_first_exactly_once():
    model = CharRNN(tiny_model_config(9)).eval()
    tokens = np.random.default_rng(0).integers(0, 9, size=5_003).astype(np.uint8)
    result = evaluate(model, tokens, num_streams=1)
    assert result.chars == 5_002
    assert math.isclose(result.loss, single_stream_loss(model, tokens), rel_tol=1e-5)
    assert math.isclose(result.bpc, result.loss / math.log(2))
    assert math.isclose(result.perplexity, math.exp(result.loss))


def test_parallel_streams_with_burn_in_match_one_stream():
    """Cutting the text into streams must not change the answer: each stream is warmed up on the
    text before it. A model with long memory (a slow-decay LSTM) shows a missing warm-up."""
    torch.manual_seed(0)
    model = CharRNN(tiny_model_config(9, hidden_size=16)).eval()
    with torch.no_grad():
        model.rnn.bias_hh_l0[16:32] += 2.0  # forget gate nearer 1: the state remembers further back
        model.head.weight.mul_(4)
    tokens = np.random.default_rng(1).integers(0, 9, size=40_001).astype(np.uint8)
    exact = single_stream_loss(model, tokens)
    parallel = evaluate(model, tokens, num_streams=8, burn_in=256)
    cold = evaluate(model, tokens, num_streams=8, burn_in=0)
    assert parallel.chars == cold.chars == 40_000
    assert abs(parallel.loss - exact) < 2e-6 < abs(cold.loss - exact)


def test_evaluate_restores_training_mode():
    model = CharRNN(tiny_model_config(9, dropout=0.5)).train()
    tokens = np.arange(100, dtype=np.uint8) % 9
    a = evaluate(model, tokens)
    assert model.training
    assert a.loss == evaluate(model, tokens).loss  # dropout off while evaluating


def per_character_losses(model, tokens) -> torch.Tensor:
    ids = torch.as_tensor(tokens.astype(np.int64)).view(-1, 1)
    with torch.no_grad():
        logits, _ = model(ids[:-1])
    return F.cross_entropy(logits.view(-1, logits.shape[-1]), ids[1:].view(-1), reduction="none")


def test_a_sample_scores_pieces_spread_over_the_whole_text():
    """--eval-chars on a long text: 8 pieces of 1,125 characters starting every 5,000, each warmed up on
    the text before it, score as those characters do in one pass over all of it."""
    torch.manual_seed(0)
    model = CharRNN(tiny_model_config(9, hidden_size=16)).eval()
    with torch.no_grad():
        model.rnn.bias_hh_l0[16:32] += 2.0  # long memory: a piece without its warm-up would show
        model.head.weight.mul_(4)
    tokens = np.random.default_rng(2).integers(0, 9, size=40_001).astype(np.uint8)
    losses = per_character_losses(model, tokens)
    result = evaluate(model, tokens, num_streams=8, burn_in=256, sample=9_000)
    scored = torch.cat([losses[start : start + 1_125] for start in range(0, 40_000, 5_000)])
    assert result.chars == 9_000
    assert abs(result.loss - scored.mean().item()) < 2e-6
    whole = evaluate(model, tokens, num_streams=8, burn_in=256, sample=40_000)  # not below the length: all
    assert whole.chars == 40_000 and abs(whole.loss - losses.mean().item()) < 2e-6


def test_a_sample_is_not_fooled_by_a_text_whose_start_is_unlike_the_rest():
    """A validation text that starts with what the model predicts well (the last files of a source tree,
    a chapter it has just read): its first characters would flatter the model, the spread sample does not."""
    model = CharRNN(tiny_model_config(9)).eval()
    with torch.no_grad():
        model.head.bias[0] += 8.0  # the model expects token 0 above all
    rng = np.random.default_rng(3)
    tokens = np.concatenate([np.zeros(20_000), rng.integers(0, 9, size=180_001)]).astype(np.uint8)
    whole = evaluate(model, tokens).loss
    first = evaluate(model, tokens[:20_001]).loss
    sample = evaluate(model, tokens, sample=20_000).loss  # 16 pieces
    assert first < whole / 10  # the start alone says the model is nearly perfect
    assert abs(sample - whole) < 0.05 * whole
