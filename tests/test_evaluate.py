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
