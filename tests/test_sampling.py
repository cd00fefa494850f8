import itertools

import numpy as np
import pytest
import torch

from charnn import CharnnError, CharRNN, Engine, SamplingConfig, generate
from charnn.generate.choice import RecentWindow, StreamOptions, draw, filter_logits, penalize
from charnn.generate.sampler import TextGenerator, beam_search

from conftest import tiny_model_config


def model_for(cell="lstm", vocab_size=20, layers=2) -> CharRNN:
    torch.manual_seed(3)
    model = CharRNN(tiny_model_config(vocab_size, cell=cell, num_layers=layers))
    with torch.no_grad():  # sharper than at initialisation, so sampling and greedy differ visibly
        model.head.weight.mul_(8)
    return model.eval()


def run(model, prime=(1, 2, 3), length=60, **kwargs) -> list[list[int]]:
    steps = list(generate(model, list(prime), length, **kwargs))
    return np.stack(steps, axis=1).tolist() if steps else []


def test_same_seed_same_text_and_different_seed_different_text():
    model = model_for()
    a = run(model, seed=7)
    assert a == run(model, seed=7)
    assert a != run(model, seed=8)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_near_zero_temperature_and_top_k_1_equal_greedy(cell):
    model = model_for(cell)
    greedy = run(model, config=SamplingConfig(temperature=0), seed=1)
    assert run(model, config=SamplingConfig(temperature=1e-4), seed=2) == greedy
    assert run(model, config=SamplingConfig(temperature=1.5, top_k=1), seed=3) == greedy
    assert run(model, config=SamplingConfig(temperature=1.0), seed=4) != greedy


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_sampler_feeds_back_what_it_samples(cell):
    """Each generated character is the input of the next step: greedy output must agree with a
    teacher-forced pass of the model over prime + output, position by position."""
    model = model_for(cell)
    prime = [4, 5, 6]
    out = run(model, prime=prime, length=40, config=SamplingConfig(temperature=0))[0]
    full = torch.tensor(prime + out).view(-1, 1)
    with torch.no_grad():
        logits, _ = model(full[:-1])
    predicted = logits.argmax(-1).view(-1)[len(prime) - 1 :]
    assert predicted.tolist() == out


def test_num_samples_are_independent_and_seeded():
    model = model_for()
    rows = run(model, num_samples=4, seed=11)
    assert len(rows) == 4 and all(len(r) == 60 for r in rows)
    assert len({tuple(r) for r in rows}) > 1
    assert rows == run(model, num_samples=4, seed=11)


def test_sampling_follows_the_model_distribution():
    """With temperature 1 the first character's frequencies match the model's softmax."""
    model = model_for(vocab_size=6, layers=1)
    with torch.no_grad():
        model.head.weight.div_(8)
        logits, _ = model(torch.tensor([[1]]))
    probs = logits[-1, 0].softmax(-1).numpy()
    first = np.array(run(model, prime=[1], length=1, num_samples=20_000, seed=0))[:, 0]
    freq = np.bincount(first, minlength=6) / len(first)
    assert np.abs(freq - probs).max() < 0.02


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_one_stream_on_the_cpu_follows_the_model_distribution(temperature):
    """One stream samples through numpy end to end (the engine): over many steps its frequencies match
    softmax(logits / T). The output layer's bias alone sets the logits, so every step has the same
    distribution."""
    model = model_for(vocab_size=5, layers=1)
    bias = torch.tensor([1.0, 0.2, -0.5, 0.0, -3.0])
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.copy_(bias)
    generator = TextGenerator(model, SamplingConfig(temperature=temperature), seed=5)
    assert isinstance(generator.model, Engine)  # a model on the CPU is stepped by the numpy engine
    ids = np.concatenate(list(generate(model, [1], 30_000, SamplingConfig(temperature=temperature), seed=5)))
    freq = np.bincount(ids, minlength=5) / len(ids)
    assert np.abs(freq - (bias / temperature).softmax(-1).numpy()).max() < 0.01


def test_a_draw_never_picks_an_impossible_character():
    rng = np.random.default_rng(0)
    logits = np.array([[0.0, -200.0, 3.0, -np.inf], [-np.inf, -np.inf, 5.0, -300.0]], dtype=np.float32)
    picks = np.stack([draw(logits, [rng, rng]) for _ in range(5_000)])
    assert set(picks[:, 0]) == {0, 2} and set(picks[:, 1]) == {2}


@pytest.mark.parametrize("streams", [1, 3])
def test_ids_come_out_as_int64_numpy_arrays_from_either_stepper(streams):
    model = model_for()
    for config in (SamplingConfig(), SamplingConfig(top_k=3), SamplingConfig(temperature=0)):
        steps = list(generate(model, [1, 2], 5, config, num_samples=streams, seed=0))
        assert all(isinstance(s, np.ndarray) and s.dtype == np.int64 and s.shape == (streams,) for s in steps)


def kept_by(config: SamplingConfig) -> list[bool]:
    """Which of four characters of probabilities 0.5, 0.3, 0.15 and 0.05 a config's filters keep."""
    logits = np.log(np.array([[0.5, 0.3, 0.15, 0.05]], dtype=np.float32))
    return np.isfinite(filter_logits(logits, StreamOptions.of([config])))[0].tolist()


def test_top_k_and_top_p_filter():
    kept = kept_by
    assert kept(SamplingConfig(top_k=2)) == [True, True, False, False]
    assert kept(SamplingConfig(top_p=0.5)) == [True, False, False, False]
    assert kept(SamplingConfig(top_p=0.7)) == [True, True, False, False]
    assert kept(SamplingConfig(top_p=0.9)) == [True, True, True, False]
    assert kept(SamplingConfig(top_p=1.0)) == [True, True, True, True]


def test_bad_sampling_values_are_clear_errors_and_top_k_is_clamped():
    for config, match in [(SamplingConfig(temperature=-1), "--temp"), (SamplingConfig(top_k=0), "--top-k"),
                          (SamplingConfig(top_p=0), "--top-p"), (SamplingConfig(top_p=1.5), "--top-p")]:
        with pytest.raises(CharnnError, match=match):
            config.validate(10)
    assert SamplingConfig(top_k=500).validate(10).top_k == 10
    model = model_for()
    assert len(run(model, config=SamplingConfig(top_k=500), seed=0)[0]) == 60


# --- beyond temperature: min-p, repetition penalty, beam search, a generator that keeps its state --


def test_min_p_keeps_characters_at_least_that_fraction_of_the_likeliest():
    kept = kept_by
    assert kept(SamplingConfig(min_p=0.5)) == [True, True, False, False]  # 0.15 < 0.25
    assert kept(SamplingConfig(min_p=0.1)) == [True, True, True, True]  # 0.05 >= 0.05
    assert kept(SamplingConfig(min_p=1.0)) == [True, False, False, False]
    for bad in (SamplingConfig(min_p=-0.1), SamplingConfig(min_p=2), SamplingConfig(repetition_penalty=0),
                SamplingConfig(repetition_window=-1)):
        with pytest.raises(CharnnError):
            bad.validate(10)
    assert SamplingConfig(repetition_window=0).validate(10).repetition_window == 0  # 0: all of them


def test_repetition_penalty_follows_transformers_rule():
    logits = np.array([[2.0, -2.0, 2.0, -2.0]], dtype=np.float32)
    seen = np.array([[True, True, False, False]])
    assert penalize(logits, seen, np.array([2.0], dtype=np.float32)).tolist() == [[1.0, -4.0, 2.0, -2.0]]


def test_recent_characters_forget_what_left_the_window():
    recent = RecentWindow(np.array([3, 3]), vocab_size=5)
    recent.add(np.array([[0, 4], [1, 4]]))  # (T, B), oldest first
    recent.add(np.array([2, 3]))
    assert recent.seen().tolist() == [[True, True, True, False, False], [False, False, False, True, True]]
    recent.add(np.array([2, 3]))  # the oldest (0 and 4) leave the window
    assert recent.seen().tolist() == [[False, True, True, False, False], [False, False, False, True, True]]
    everything = RecentWindow(np.array([0]), 5)  # 0: every character counts
    everything.add(np.array([[0], [1], [2], [3]]))
    assert everything.seen().tolist() == [[True, True, True, True, False]]


def test_a_strong_repetition_penalty_stops_greedy_decoding_from_repeating():
    model = model_for()
    greedy = run(model, length=80, config=SamplingConfig(temperature=0))[0]
    assert any(greedy[i] in greedy[max(i - 4, 0):i] for i in range(len(greedy)))  # it loops without one
    config = SamplingConfig(temperature=0, repetition_penalty=1e6, repetition_window=4)
    penalized = run(model, length=80, config=config)[0]
    assert all(penalized[i] not in penalized[max(i - 4, 0):i] for i in range(len(penalized)))


def test_generator_state_carries_across_calls():
    """Sampling in two calls gives what one call gives, and text fed after sampling continues the
    same sequence: the logits equal a teacher-forced pass over everything read and drawn."""
    model = model_for()
    whole = run(model, prime=[1, 2], length=30, seed=9)[0]
    generator = TextGenerator(model, seed=9)
    generator.feed([1, 2])
    parts = [int(i[0]) for i in generator.sample(12)] + [int(i[0]) for i in generator.sample(18)]
    assert parts == whole
    generator.feed([7, 8])
    with torch.no_grad():
        logits, _ = model(torch.tensor([1, 2, *whole, 7, 8]).view(-1, 1))
    np.testing.assert_allclose(generator.logits, logits[-1].numpy(), atol=1e-5)
    generator.reset()
    with pytest.raises(CharnnError, match="feed"):
        next(generator.sample(1))


def sequence_log_prob(model, prime, continuation) -> float:
    ids = torch.tensor(list(prime) + list(continuation)).view(-1, 1)
    with torch.no_grad():
        logits, _ = model(ids[:-1])
    log_probs = logits.log_softmax(-1)[len(prime) - 1 :, 0]
    return float(log_probs.gather(1, torch.tensor(continuation).view(-1, 1)).sum())


def test_beam_search_finds_the_most_likely_continuation():
    model = model_for(vocab_size=4, layers=1)
    with torch.no_grad():
        model.head.weight.div_(4)  # less peaked, so greedy is not already optimal
    prime, length = [1, 2], 4
    best = max(itertools.product(range(4), repeat=length), key=lambda c: sequence_log_prob(model, prime, c))
    assert list(beam_search(model, prime, length, beams=4 ** length)) == list(best)  # a beam as wide as all texts
    greedy = run(model, prime=prime, length=length, config=SamplingConfig(temperature=0))[0]
    assert list(beam_search(model, prime, length, beams=1)) == greedy
    narrow = list(beam_search(model, prime, length, beams=3))
    assert sequence_log_prob(model, prime, narrow) >= sequence_log_prob(model, prime, greedy) - 1e-6
