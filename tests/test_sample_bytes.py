"""`charnn sample` prints the same bytes as the code before charnn had one sampler (issue 24): the
digests below were recorded with that code (on our 2-core CI machine: float rounding is its BLAS's), on
models of seeded random weights, for every sampling option alone and combined, a GRU with a record
delimiter (--reset-on) and a byte-level model. scripts/sample_bytes.py checks the same on
trained runs and the README's examples, against any checkout."""

import hashlib

import numpy as np
import pytest

from charnn import ModelConfig, Vocab, Weights, write_weights
from charnn.cli import main
from charnn.model.spec import weight_shapes

CHARS = "\n !',-.:;?ABCDEFGHIJKLMNOPRSTUWYabcdefghiklmnoprstuvwy"

# model, arguments, sha256 of stdout (the first 16 hex digits)
CASES = [
    ("lstm", ["-n", "300", "--seed", "1", "--temp", "0.8"], "be4ed20444e455ec"),
    ("lstm", ["-n", "300", "--temp", "0", "--prime", "The "], "47aeb6362480a39d"),
    ("lstm", ["-n", "300", "--seed", "2", "--top-k", "5"], "65ce3fc56bc0326a"),
    ("lstm", ["-n", "300", "--seed", "3", "--top-p", "0.9", "--temp", "1.2"], "9292f9d7c11c57df"),
    ("lstm", ["-n", "300", "--seed", "4", "--min-p", "0.2", "--temp", "0.8"], "7f5778a921e057fa"),
    ("lstm", ["-n", "300", "--seed", "5", "--top-k", "10", "--top-p", "0.8", "--min-p", "0.05", "--temp", "0.7"],
     "093d37c5f0dd11a5"),
    ("lstm", ["-n", "300", "--seed", "6", "--repetition-penalty", "1.3", "--repetition-window", "16"],
     "06cb4d6c24f95ae5"),
    ("lstm", ["-n", "300", "--seed", "7", "--repetition-penalty", "1.5", "--repetition-window", "0"],
     "26534b8bfa529359"),
    ("lstm", ["-n", "200", "--temp", "0", "--repetition-penalty", "1.2", "--prime", "A"], "23c06222ac27e80d"),
    ("lstm", ["-n", "100", "--beam", "4", "--prime", "The "], "b4c052c4545c4570"),
    ("lstm", ["-n", "100", "--beam", "3", "--repetition-penalty", "1.2"], "ee3c54e0bd6be3fb"),
    ("lstm", ["-n", "200", "--seed", "8", "--num-samples", "3", "--temp", "0.9", "--top-k", "10"], "2dfbb76cfd36ef92"),
    ("lstm", ["-n", "400", "--seed", "9", "--num-samples", "4", "--stop", "e", "--separator", "\\0"],
     "2c711fb22329702a"),  # the bytes of 1c2352e923a3bbf7 and a NUL ending the last sample
    ("lstm", ["-n", "100", "--seed", "10", "--no-prime-echo", "--prime", "KING"], "7da47c5c09720139"),
    ("gru", ["-n", "300", "--seed", "11", "--temp", "0.9", "--repetition-penalty", "1.3"], "858d8bde803d8cc2"),
    ("gru", ["-n", "200", "--seed", "12", "--num-samples", "3", "--stop", "\\n\\n"], "61491fa8ade38442"),
    ("gru", ["-n", "80", "--beam", "3"], "7b61dbae7120ad7e"),
    ("bytes", ["-n", "300", "--seed", "13", "--top-p", "0.95"], "7f87df4a736fcd50"),
]


def write_model(path, kind: str) -> None:
    """A model of seeded random weights, scaled so that its distributions are peaked like a trained one's."""
    rng = np.random.default_rng(24)
    vocab = Vocab(mode="byte") if kind == "bytes" else Vocab(mode="char", chars=CHARS)
    reset_ids = (0, 0) if kind == "gru" else ()
    config = ModelConfig(vocab_size=vocab.size, cell="gru" if kind == "gru" else "lstm", num_layers=2, hidden_size=32,
                         embed_size=16, dropout=0.0, reset_ids=reset_ids)
    scale = {"embedding.weight": 1.0, "head.weight": 1.5, "head.bias": 1.0}
    arrays = {name: (rng.standard_normal(shape) * scale.get(name, 0.1 if kind == "gru" else 0.25)).astype(np.float32)
              for name, shape in sorted(weight_shapes(config).items())}
    arrays["head.bias"][[0, 1]] += 1.5  # newlines and spaces: records to end at, words to stop on
    write_weights(path, Weights(config, vocab, arrays, {"step": 1}))


def digests(root, run) -> dict[str, str]:
    """Each case's stdout digest; `run(argv) -> bytes` runs `charnn ARGV` and returns what it printed."""
    models = {}
    for kind in ("lstm", "gru", "bytes"):
        models[kind] = root / f"{kind}.safetensors"
        write_model(models[kind], kind)
    return {" ".join([kind, *args]): hashlib.sha256(run(["sample", str(models[kind]), "--threads", "1", *args]))
            .hexdigest()[:16] for kind, args, _ in CASES}


@pytest.fixture
def printed(capfdbinary):
    def run(argv) -> bytes:
        assert main(argv) in (0, None)
        return capfdbinary.readouterr().out
    return run


def test_sampling_prints_the_bytes_it_printed_before_one_sampler(tmp_path, printed):
    got = digests(tmp_path, printed)
    want = {" ".join([kind, *args]): digest for kind, args, digest in CASES}
    assert got == want
