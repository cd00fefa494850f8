"""The batching core of `charnn serve`, without HTTP: requests joining and leaving one batch keep their
own text (as `charnn sample --seed` draws it), hand-outs come in chunks of steps, and a prompt's last
character is read in the batch's step."""

import threading
import time

import numpy as np
import pytest
import torch

from charnn import CharRNN, SamplingConfig, Vocab, engine_from_model
from charnn.generate.streams import Streams, sample_streams
from charnn.model.stepper import TorchSteps
from charnn.serve.batcher import CHUNK, Batcher, CompletionRequest

from conftest import tiny_model_config


def wait_for(predicate, seconds=10.0):
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_requests_joining_and_leaving_a_batch_keep_their_own_text():
    """Requests with different options, started while others run, some leaving early: each one's text is
    what it draws alone (`sample_streams` with its seed), and the batch empties when they are done. Every
    other request wants its text whole (an answer not streamed): it comes in one hand-over."""
    torch.manual_seed(3)
    vocab = Vocab(chars="\nabcdefgh ")
    engine = engine_from_model(CharRNN(tiny_model_config(vocab.size)).eval())
    configs = [SamplingConfig(), SamplingConfig(temperature=0), SamplingConfig(top_k=3, repetition_penalty=1.5),
               SamplingConfig(top_p=0.8, min_p=0.1, temperature=0.7), SamplingConfig(repetition_penalty=1.2)]
    requests = [CompletionRequest(prompt="abc " * (i * 80 + 1), max_tokens=60 + 40 * i, sampling=config,
                                  n=1 + i % 2, seed=i, stop=("hh",) if i == 4 else ()) for i, config in enumerate(configs)]
    batcher = Batcher(engine, vocab).start()
    texts = [[""] * r.n for r in requests]
    calls = [0] * len(requests)
    done = threading.Semaphore(0)

    def deliver(index):
        finished = []

        def take(pieces):
            calls[index] += 1
            for piece in pieces:
                texts[index][piece.index] += piece.text
                finished.extend([piece.index] if piece.finish_reason else [])
            if len(finished) == requests[index].n:
                done.release()
        return take

    for index, request in enumerate(requests):  # each joins while the earlier ones are generating
        batcher.submit(request, deliver(index), whole=index % 2 == 1)
        time.sleep(0.002)
    for _ in requests:
        assert done.acquire(timeout=30)
    wait_for(lambda: batcher.load() == {"requests": 0, "streams": 0, "paused": 0})
    batcher.stop()
    for index, request in enumerate(requests):
        prompt = vocab.encode(request.prompt)
        alone = np.stack(list(sample_streams(engine, prompt, request.max_tokens, request.sampling, request.n,
                                             request.seed)))
        for choice in range(request.n):
            expected = vocab.decode(alone[:, choice])
            if request.stop and "hh" in expected:
                expected = expected[: expected.find("hh")]
            assert texts[index][choice] == expected, (index, choice)
    assert [calls[index] == 1 for index in range(len(requests))] == [False, True, False, True, False]


def test_a_streamed_answer_comes_a_character_first_then_in_chunks_of_steps():
    """The step a request joins its batch hands its first character out alone (the time to it is a
    step's); then, while no request arrives, joins or ends, CHUNK steps a hand-out; the choice ends at its
    length exactly, and its text is the one the same seed gives whole."""
    torch.manual_seed(4)
    vocab = Vocab(chars="\nabcdefgh ")
    batcher = Batcher(engine_from_model(CharRNN(tiny_model_config(vocab.size)).eval()), vocab).start()
    request = CompletionRequest(prompt="abc", max_tokens=5 * CHUNK + 3, n=2, seed=9)
    handed, answers = [], []
    ended = threading.Semaphore(0)

    def streamed(pieces):
        handed.append(pieces)
        if any(piece.finish_reason for piece in pieces):
            ended.release()

    def whole(pieces):
        answers.append(pieces)
        ended.release()

    batcher.submit(request, streamed)
    assert ended.acquire(timeout=30)
    batcher.submit(request, whole, whole=True)
    assert ended.acquire(timeout=30)
    batcher.stop()
    sizes = [{len(piece.text) for piece in pieces} for pieces in handed]
    assert sizes == [{1}] + [{CHUNK}] * 5 + [{2}]
    assert [piece.finish_reason for piece in handed[-1]] == ["length", "length"]
    texts = ["".join(piece.text for pieces in handed for piece in pieces if piece.index == i) for i in range(2)]
    assert texts == [piece.text for piece in answers[0]] and texts[0] != texts[1]


def tiny_engine(seed: int):
    torch.manual_seed(seed)
    vocab = Vocab(chars="\nabcdefgh ")
    return engine_from_model(CharRNN(tiny_model_config(vocab.size)).eval()), vocab


@pytest.mark.parametrize("stepper", ["numpy", "torch"])
def test_streams_that_leave_their_last_character_unread_draw_what_feed_gives(stepper):
    """`feed_but_last` leaves a prompt's last character for the next step: streams fed so, alone or
    joined to a batch that has drawn already (its pending ids and theirs read in one step), or to one
    started the same way (neither has a state yet), draw what `feed` then `sample` draws, whichever
    steps the model (the numpy engine on a CPU, PyTorch's stepper on a GPU)."""
    engine, _ = tiny_engine(5)
    if stepper == "torch":
        torch.manual_seed(5)
        engine = TorchSteps(CharRNN(tiny_model_config(engine.vocab_size)).eval())
    config = SamplingConfig(repetition_penalty=1.3)
    for prompt in ([3], [1, 2, 3, 4]):
        alone = [np.stack(list(sample_streams(engine, prompt, 30, config, 2, seed))) for seed in (1, 2)]
        first = Streams.start(engine, config, 2, seed=1)
        first.feed_but_last(prompt)
        assert first.logits is None and first.pending.tolist() == [prompt[-1]] * 2
        second = Streams.start(engine, config, 2, seed=2)
        second.feed_but_last(prompt)
        first.join(second)  # two fresh batches: nothing read yet on either side
        drawn = np.stack([first.advance() for _ in range(30)])
        np.testing.assert_array_equal(drawn, np.concatenate(alone, axis=1))

        running = Streams.start(engine, config, 2, seed=1)
        running.feed(prompt)
        ahead = [running.advance() for _ in range(5)]
        late = Streams.start(engine, config, 2, seed=2)
        late.feed_but_last(prompt)
        running.join(late)  # the batch's drawn ids and the prompt's last character, read side by side
        after = np.stack([running.advance() for _ in range(25)])
        np.testing.assert_array_equal(np.concatenate((np.stack(ahead), after[:, :2])), alone[0])
        np.testing.assert_array_equal(after[:, 2:], alone[1][:25])


def test_requests_with_one_character_prompts_arriving_together_keep_their_own_text():
    """Empty prompts (the default start, one character) and one-character ones, submitted at once while a
    batch is stepping, so that they join it in one step with their last characters unread, some with
    n = 2 and some read slowly enough to pause: each choice's text is what its seed draws alone."""
    engine, vocab = tiny_engine(6)
    batcher = Batcher(engine, vocab).start()
    requests = [CompletionRequest(prompt="" if i % 3 else "a", max_tokens=40 + 13 * i, n=1 + i % 2, seed=i)
                for i in range(8)]
    requests[0] = CompletionRequest(prompt="abc", max_tokens=10**6, seed=0)  # a batch stepping throughout
    texts = [[""] * request.n for request in requests]
    ended = threading.Semaphore(0)
    jobs = []

    def deliver(index):
        def take(pieces):
            for piece in pieces:
                texts[index][piece.index] += piece.text
            if jobs[index].finished:
                ended.release()
        return take

    jobs.append(batcher.submit(requests[0], deliver(0)))
    wait_for(lambda: texts[0][0], 10)  # a batch is stepping
    with batcher._wake:  # the others wait for the same step
        for index, request in enumerate(requests[1:], 1):
            jobs.append(batcher.submit(request, deliver(index), paced=index % 4 == 0))
    for _ in range(200):  # the paced ones' clients take their text late, now and then
        time.sleep(0.002)
        for job in jobs[::4]:
            job.taken = job.delivered
        batcher.wake()
    for _ in requests[1:]:
        assert ended.acquire(timeout=30)
    batcher.cancel(jobs[0])
    wait_for(lambda: batcher.load() == {"requests": 0, "streams": 0, "paused": 0})
    batcher.stop()
    for index, request in enumerate(requests[1:], 1):
        prompt = vocab.encode(request.prompt or "\n")
        alone = np.stack(list(sample_streams(engine, prompt, request.max_tokens, request.sampling, request.n,
                                             request.seed)))
        assert texts[index] == [vocab.decode(alone[:, choice]) for choice in range(request.n)], index
