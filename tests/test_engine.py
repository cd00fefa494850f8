"""The one sampler (charnn.generate: choice, streams, beam) on the numpy engine (charnn.model.engine), held to
the PyTorch model and to PyTorch's stepper: the same next-character probabilities, the same text from either
stepper, filters equal to an independent implementation, the same beams."""

import numpy as np
import pytest
import torch

from charnn import CharnnError, CharRNN, SamplingConfig, TorchGenerator, TorchSteps, engine_from_model
from charnn.generate.beam import beam_search
from charnn.generate.choice import RecentWindow, StreamOptions, choose, filter_logits, min_p, penalize, top_k, top_p
from charnn.generate.streams import Streams, sample_streams
from charnn.data.batches import reset_mask

from conftest import tiny_model_config

DELIMITER = (3, 5)  # --reset-on: a two-character delimiter, so that it straddles reads too


def model_for(cell="lstm", layers=2, vocab_size=17, resets=False, sharpen=3.0) -> CharRNN:
    """Weights `sharpen` times their initial size: states far from zero. (At 4x a 3-layer tanh RNN turns
    chaotic: float32 rounding, different in any two implementations, grows to 1e-5 over a long prime.)"""
    torch.manual_seed(11)
    config = tiny_model_config(vocab_size, cell=cell, num_layers=layers, reset_ids=DELIMITER if resets else ())
    model = CharRNN(config).eval()
    with torch.no_grad():  # larger weights than at initialisation: a state that is far from zero
        for name, parameter in model.named_parameters():
            parameter.mul_(sharpen if name.startswith("rnn.weight") or name == "head.weight" else 1.0)
    return model


def torch_probs(model: CharRNN, ids: np.ndarray) -> np.ndarray:
    """The model's next-character probabilities after ids (T, B), with the resets training applies."""
    tokens = torch.as_tensor(ids, dtype=torch.int64)
    resets = reset_mask(tokens, model.config.reset_ids) if model.config.reset_ids else None
    with torch.no_grad():
        logits, _ = model(tokens, None, resets)
    return logits[-1].softmax(-1).numpy()


def softmax(logits: np.ndarray) -> np.ndarray:
    weights = np.exp(logits - logits.max(axis=1, keepdims=True))
    return weights / weights.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("resets", [False, True], ids=["plain", "reset-on"])
@pytest.mark.parametrize("layers", [1, 3])
@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_next_character_probabilities_equal_the_models_forward_pass(cell, layers, resets):
    """After a long prime (several read chunks), and then after each stream's own sampled characters."""
    model = model_for(cell, layers, resets=resets)
    rng = np.random.default_rng(0)
    prime = rng.integers(0, 17, 2500)
    prime[rng.integers(0, 2499, 60)] = 3  # plenty of delimiters: 3 then 5
    prime[np.flatnonzero(prime == 3) + 1] = 5
    streams = Streams.start(engine_from_model(model), SamplingConfig(temperature=1.5), num_samples=3, seed=0)
    streams.feed(prime)
    np.testing.assert_allclose(softmax(streams.logits)[0], torch_probs(model, prime[:, None])[0], atol=1e-5)
    drawn = np.stack(list(streams.sample(40)))  # (40, 3): every stream its own text
    streams.settle()
    history = np.concatenate([np.repeat(prime[:, None], 3, axis=1), drawn])
    np.testing.assert_allclose(softmax(streams.logits), torch_probs(model, history), atol=1e-5)
    assert len({tuple(column) for column in drawn.T}) == 3
    if resets:  # after a delimiter the prediction forgets everything before it
        streams.feed([3, 5])
        other = Streams.start(streams.model, seed=0)
        other.feed([9, 3, 5])
        np.testing.assert_allclose(streams.logits, np.repeat(other.logits, 3, axis=0), atol=1e-6)


def test_a_delimiter_split_between_two_reads_still_resets():
    model = model_for("lstm", resets=True)
    streams = Streams.start(engine_from_model(model), seed=1)
    streams.feed([1, 2, 3])
    streams.feed([5])
    fresh = Streams.start(streams.model, seed=1)
    fresh.feed([3, 5])
    np.testing.assert_allclose(streams.logits, fresh.logits, atol=1e-6)


# --- the filters, against another implementation on the same logits -------------------------------


def random_logits(rows=6, vocab=40, seed=0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal((rows, vocab)) * 3).astype(np.float32)


def reference_filters(logits: np.ndarray, config: SamplingConfig) -> np.ndarray:
    """Temperature, top-k, top-p and min-p on (B, V) logits as PyTorch's sampling path applied them before
    charnn sampled through one sampler: an implementation of its own, for the numpy filters to equal."""
    logits = torch.from_numpy(logits)
    if config.temperature != 1.0:
        logits = logits / config.temperature
    if config.top_k is not None and config.top_k < logits.shape[-1]:
        kth = torch.topk(logits, config.top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, -torch.inf)
    if config.top_p is not None and config.top_p < 1:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        drop_sorted = probs.cumsum(dim=-1) - probs >= config.top_p
        logits = logits.masked_fill(torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted), -torch.inf)
    if config.min_p:
        logits = logits.masked_fill(logits < logits.max(dim=-1, keepdim=True).values + float(np.log(config.min_p)),
                                    -torch.inf)
    return logits.numpy()


@pytest.mark.parametrize("k", [1, 3, 39, 40])
def test_top_k_equals_the_reference(k):
    logits = random_logits()
    want = reference_filters(logits, SamplingConfig(top_k=k))
    np.testing.assert_array_equal(top_k(logits, np.full(6, k)), want)


@pytest.mark.parametrize("p", [0.05, 0.5, 0.9, 0.999])
def test_top_p_equals_the_reference(p):
    logits = random_logits(seed=1)
    want = reference_filters(logits, SamplingConfig(top_p=p))
    np.testing.assert_array_equal(top_p(logits, np.full(6, p, dtype=np.float32)), want)


@pytest.mark.parametrize("p", [0.0, 0.01, 0.3, 1.0])
def test_min_p_equals_the_reference(p):
    logits = random_logits(seed=2)
    want = reference_filters(logits, SamplingConfig(min_p=p))
    np.testing.assert_allclose(min_p(logits, np.full(6, p, dtype=np.float32)), want, rtol=0, atol=0)


@pytest.mark.parametrize("penalty", [0.8, 1.3, 5.0])
def test_repetition_penalty_is_transformers_rule(penalty):
    logits = random_logits(seed=3)
    seen = np.random.default_rng(4).random(logits.shape) < 0.3
    want = np.where(seen, np.where(logits > 0, logits / np.float32(penalty), logits * np.float32(penalty)), logits)
    np.testing.assert_array_equal(penalize(logits, seen, np.full(6, penalty, dtype=np.float32)), want)


def test_each_stream_filters_with_its_own_options():
    """Per-stream options give, row by row, what the reference gives each row with that row's config."""
    logits = random_logits(rows=4, seed=5)
    configs = [SamplingConfig(temperature=0.7, top_k=5), SamplingConfig(top_p=0.6),
               SamplingConfig(temperature=1.3, min_p=0.2), SamplingConfig(top_k=9, top_p=0.8, min_p=0.05)]
    options = StreamOptions.of(configs)
    got = filter_logits(logits * options.inverse_temperature, options)
    for row, config in enumerate(configs):
        want = reference_filters(logits[row : row + 1], config)[0]
        np.testing.assert_allclose(got[row], want, rtol=1e-6)


def test_recent_window_holds_each_streams_last_characters():
    rng = np.random.default_rng(6)
    for window in (3, 0):  # 0: all of them
        recent, history = RecentWindow(np.full(2, window), 7), [[], []]
        for length in (5, 1, 1, 9, 1, 2):
            ids = rng.integers(0, 7, (length, 2))
            recent.add(ids)
            for stream in range(2):
                history[stream] += ids[:, stream].tolist()
            want = [[c in (h[-window:] if window else h) for c in range(7)] for h in history]
            assert recent.seen().tolist() == want


def test_streams_with_different_windows_share_a_history():
    recent = RecentWindow(np.array([2, 0, 4]), 6)
    recent.add(np.array([[0, 0, 0], [1, 1, 1], [2, 2, 2], [3, 3, 3], [4, 4, 4]]))
    assert recent.seen().tolist() == [[False, False, False, True, True, False], [True] * 5 + [False],
                                      [False, True, True, True, True, False]]


# --- drawing ---------------------------------------------------------------------------------------


def test_draws_follow_the_filtered_distribution():
    """Temperature, then top-k: only the k likeliest appear, as often as softmax(logits / T) says."""
    logits = np.log(np.array([[0.4, 0.3, 0.2, 0.1]], dtype=np.float32))
    options = StreamOptions.of([SamplingConfig(temperature=0.5, top_k=3)])
    rng = [np.random.default_rng(7)]
    picks = np.array([choose(logits, options, rng)[0] for _ in range(20_000)])
    want = np.array([0.4, 0.3, 0.2]) ** 2
    np.testing.assert_allclose(np.bincount(picks, minlength=4)[:3] / len(picks), want / want.sum(), atol=0.01)
    assert not (picks == 3).any()


def test_greedy_and_sampled_streams_share_a_batch():
    logits = random_logits(rows=2, seed=8)
    options = StreamOptions.of([SamplingConfig(temperature=0), SamplingConfig(temperature=1.0)])
    rngs = [np.random.default_rng(0), np.random.default_rng(1)]
    picks = np.stack([choose(logits, options, rngs) for _ in range(200)])
    assert (picks[:, 0] == logits[0].argmax()).all() and len(set(picks[:, 1])) > 3


def test_same_seed_same_text_and_sample_0_of_many_is_the_single_sample():
    engine = engine_from_model(model_for())
    config = SamplingConfig(temperature=0.9, top_p=0.95, repetition_penalty=1.2)
    one = np.stack(list(sample_streams(engine, [1, 2], 80, config, seed=42)))[:, 0]
    again = np.stack(list(sample_streams(engine, [1, 2], 80, config, seed=42)))[:, 0]
    many = np.stack(list(sample_streams(engine, [1, 2], 80, config, num_samples=4, seed=42)))
    other = np.stack(list(sample_streams(engine, [1, 2], 80, config, seed=43)))[:, 0]
    assert one.tolist() == again.tolist() and one.tolist() == many[:, 0].tolist() and one.tolist() != other.tolist()
    assert len({tuple(column) for column in many.T}) == 4


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("config", [SamplingConfig(temperature=0, repetition_penalty=1.5, repetition_window=5),
                                    SamplingConfig(temperature=0.9, top_p=0.9, min_p=0.02, repetition_penalty=1.2)],
                         ids=["greedy", "sampled"])
def test_either_stepper_gives_the_same_text(cell, config):
    """One sampler: the numpy engine and PyTorch's stepper give the same text for the same seed (their logits
    agree to rounding, far from any boundary a draw could fall on), streams and --reset-on included."""
    model = model_for(cell, resets=True)
    torch_path = TorchGenerator(model, config, num_samples=2, seed=5)
    numpy_path = Streams.start(engine_from_model(model), config, num_samples=2, seed=5)
    for path in (torch_path, numpy_path):
        path.feed([1, 3, 5, 2])
    assert isinstance(torch_path.model, TorchSteps)
    assert np.stack(list(numpy_path.sample(60))).tolist() == np.stack(list(torch_path.sample(60))).tolist()


# --- streams joining and leaving one batch -----------------------------------------------------------


def test_streams_started_apart_continue_together():
    """A batch joined from two batches reads on as each stream would alone (teacher-forced: no draw decides)."""
    model = model_for("lstm", resets=True)
    engine = engine_from_model(model)
    first = Streams.start(engine, SamplingConfig(top_k=4), num_samples=2, seed=1)
    first.feed([1, 2, 3])
    drawn = next(first.sample(1))  # drawn, not yet read: joining reads it
    second = Streams.start(engine, SamplingConfig(repetition_penalty=1.3), seed=2)
    second.feed([4, 4, 3])
    first.join(second)
    assert len(first) == 3 and first.pending is None
    for ids in ([5, 5, 5], [2, 9, 1]):
        first.take(np.array(ids))
        first.settle()
    histories = [[1, 2, 3, drawn[0], 5, 2], [1, 2, 3, drawn[1], 5, 9], [4, 4, 3, 5, 1]]
    for row, history in enumerate(histories):
        np.testing.assert_allclose(softmax(first.logits)[row], torch_probs(model, np.array(history)[:, None])[0],
                                   atol=1e-5)
    logits = first.logits.copy()
    first.keep(np.array([2, 0]))
    assert len(first) == 2 and first.options.penalty.tolist() == pytest.approx([1.3, 1.0])
    np.testing.assert_array_equal(first.logits, logits[[2, 0]])
    assert first.recent is not None and first.recent.seen()[0, [4, 3, 5, 1]].all()
    with pytest.raises(CharnnError, match="same model"):
        first.join(Streams.start(engine_from_model(model), seed=0))


# --- beam search -----------------------------------------------------------------------------------


@pytest.mark.parametrize("resets,penalty", [(False, 1.0), (True, 1.0), (False, 2.0)])
def test_beam_search_is_the_same_on_either_stepper(resets, penalty):
    model = model_for("gru", vocab_size=9, resets=resets, sharpen=2.0)
    want = list(beam_search(TorchSteps(model), [1, 3, 5], 50, beams=5, repetition_penalty=penalty,
                            repetition_window=8))
    got = list(beam_search(engine_from_model(model), [1, 3, 5], 50, beams=5, repetition_penalty=penalty,
                           repetition_window=8))
    assert got == want and len(got) == 50


def test_empty_prime_and_no_prime_are_errors():
    engine = engine_from_model(model_for())
    with pytest.raises(CharnnError, match="empty"):
        next(sample_streams(engine, [], 5))
    with pytest.raises(CharnnError, match="feed"):
        next(Streams.start(engine).sample(1))
    with pytest.raises(CharnnError, match="--beam"):
        next(beam_search(engine, [1], 5, beams=0))


@pytest.mark.parametrize("resets", [False, True])
def test_batches_fed_together_read_as_each_alone(resets):
    """feed_each: new batches, and one that has drawn, each read their own text in one batched read."""
    from charnn.generate.streams import feed_each

    engine = engine_from_model(model_for("lstm", resets=resets))
    def batches():
        drawn = Streams.start(engine, SamplingConfig(repetition_penalty=1.3), num_samples=2, seed=1)
        drawn.feed([1, 2, 3])
        next(drawn.sample(1))
        return [Streams.start(engine, seed=0), Streams.start(engine, SamplingConfig(top_k=3), num_samples=3, seed=2),
                drawn]
    texts = [np.array([4, 3, 5, 6]), np.array([3, 5, 3, 5]), np.array([7, 7, 3, 5])]
    apart, together = batches(), batches()
    for batch, text in zip(apart, texts):
        batch.feed(text)
    feed_each(together, texts)
    for one, other in zip(apart, together):
        np.testing.assert_allclose(one.logits, other.logits, atol=1e-5)
        assert one.recent is None or (one.recent.seen() == other.recent.seen()).all()
    with pytest.raises(CharnnError, match="one length"):
        feed_each(batches(), [np.array([1]), np.array([1, 2]), np.array([3])])


def test_a_read_of_many_streams_holds_its_memory_to_the_bound_and_reads_the_same(monkeypatch):
    # a server's storm: many requests of many choices reading their prompts together
    import tracemalloc

    from charnn.model import engine as engine_module

    engine = engine_from_model(model_for("lstm", layers=2))
    ids = np.random.default_rng(0).integers(0, 17, size=(60, 256))
    whole_logits, whole_state = engine.read(ids, engine.zero_state(256))
    monkeypatch.setattr(engine_module, "READ_BYTES", 256 * 1024)
    tracemalloc.start()
    try:
        logits, state = engine.read(ids, engine.zero_state(256))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 * 256 * 1024  # the stretch's terms, the state and the logits; not 60 steps of terms at once
    np.testing.assert_allclose(logits, whole_logits, atol=1e-5)
    for mine, theirs in zip(state, whole_state):
        for a, b in zip(mine, theirs):
            np.testing.assert_allclose(a, b, atol=1e-5)


def test_one_stream_fanned_out_after_its_prompt_samples_as_n_streams_that_each_read_it():
    from charnn.generate.streams import alike

    engine = engine_from_model(model_for("lstm"))
    config = SamplingConfig(temperature=0.9, repetition_penalty=1.2)
    prompt = np.array([4, 3, 5, 6, 2])
    each = Streams.start(engine, config, num_samples=3, seed=7)
    each.feed(prompt)
    options, rngs = alike(config, 3, 7, engine.vocab_size)
    once = Streams(engine, options.select(np.zeros(1, dtype=np.int64)), rngs[:1])
    once.feed(prompt)
    once.fan_out(options, rngs)
    assert len(once) == 3
    np.testing.assert_allclose(once.logits, each.logits, atol=1e-5)
    assert [ids.tolist() for ids in once.sample(40)] == [ids.tolist() for ids in each.sample(40)]
    with pytest.raises(CharnnError, match="only one stream fans out"):
        once.fan_out(options, rngs)
