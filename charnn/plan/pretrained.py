"""Starting from a model instead of from nothing (`charnn train --init-from`): the base models charnn
ships, where an --init-from points, the vocabulary a fine-tuned model reads, and the weights it starts with.

A model fine-tuned on a corpus keeps its base's shape. Its vocabulary is the union of the base's and the
corpus's characters (sorted, as every vocabulary is): a character the base knows keeps its trained rows
of the embedding and the output layer, a new one gets fresh rows, initialised as a new model's are. A
byte-level model's vocabulary (all 256 bytes) needs no change; a byte-level base and a character-level
corpus (or the other way round) do not mix.

Torch-free: weights are numpy arrays here (charnn.model.weights), made tensors by the trainer.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ..config import ModelConfig, flag
from ..data.vocab import Vocab
from ..errors import CharnnError
from ..model.base import BASE_MODELS, base_model_path
from ..model.weights import Weights
from ..runs.locate import load_weights, resolve_model, weights_for
from ..runs.rundir import RunDir
from .request import TrainRequest

# fine-tuning starts from trained weights: a lower peak and a shorter warm-up than from nothing. Measured by
# `scripts/finetune.py lr` (english on 200 KB of Python's docs, 2 minutes): 1e-3/50 steps 0.791 nats/char,
# 2e-3/100 (the defaults from nothing) 0.799, 5e-4/50 0.853
FINETUNE_LR = 1e-3
FINETUNE_WARMUP = 50
SUGGESTED_BASE = "english"
SMALL_CORPUS = 1_000_000  # characters: below this, a run from nothing is told the base would likely do better
SHAPE_OPTIONS = ("cell", "num_layers", "hidden_size", "embed_size", "tie_weights")  # fixed by the base
# the vocabulary rows the base knows, in the embedding (rows) and the output layer (rows and biases)
VOCAB_ROWS = ("embedding.weight", "head.weight", "head.bias")


@dataclass(frozen=True)
class InitFrom:
    """The model a run starts from: as the user named it, the file its weights came from, the weights."""

    source: str
    path: Path
    weights: Weights

    def record(self, added: str) -> dict:
        """What config.json and `charnn info` say of it: the source, its file and fingerprint, the
        characters the corpus added."""
        digest = hashlib.sha256(self.path.read_bytes()).hexdigest()
        return {"source": self.source, "file": str(self.path.resolve()), "sha256": digest,
                "parameters": self.weights.parameters, "vocab_added": added}


def open_init(source: str, out: Path | None = None) -> InitFrom:
    """The weights --init-from names: a run directory (its best weights), a checkpoint, a .safetensors
    file or a base model's name. Not the run being written (`out`)."""
    path = resolve_model(source)
    if not path.exists():
        names = ", ".join(BASE_MODELS)
        raise CharnnError(f"--init-from {source}: no such run directory or file, nor a base model ({names})")
    if out is not None and path.is_dir() and path.resolve() == Path(out).resolve():
        raise CharnnError(f"--init-from {source}: that is the run being written (--out)",
                          hint="start from another run, or write this one elsewhere")
    run = RunDir(path)
    if path.is_dir() and not (run.owned() or any(f.is_file() for f in (run.best, run.last, run.weights))):
        raise CharnnError(f"--init-from {source}: a directory that is not a charnn run")
    file, _ = weights_for(path)
    return InitFrom(str(source), file, load_weights(file))


def fine_tuning_request(init: InitFrom, request: TrainRequest) -> TrainRequest:
    """`request` to start from `init`: the base's shape as the model's options, and the fine-tuning learning
    rate and warm-up unless given."""
    base = init.weights.config
    check_options(base, request.model.given())
    model = replace(request.model, **{name: getattr(base, name) for name in SHAPE_OPTIONS})
    tuning = {"lr": FINETUNE_LR, "warmup_steps": FINETUNE_WARMUP}
    request = request.with_train(**{k: v for k, v in tuning.items() if k not in request.given})
    return replace(request, model=model)


def suggests_base(vocab: Vocab, chars: int, request: TrainRequest) -> bool:
    """A corpus small enough that starting from the English base model would likely do better, in a run
    that leaves the model's shape open (a shape option or a --size preset would be refused with the base)."""
    shape_given = request.size not in (None, "auto") or any(name in request.model.given() for name in SHAPE_OPTIONS)
    return (vocab.mode == "char" and chars < SMALL_CORPUS and not shape_given
            and base_model_path(SUGGESTED_BASE) is not None)


def check_options(base: ModelConfig, given: dict) -> None:
    """The shape comes from the base: an option that contradicts it is refused, with the base's value."""
    for name in SHAPE_OPTIONS:
        value = given.get(name)
        if value is not None and value != getattr(base, name):
            raise CharnnError(f"--init-from: {flag(name)} {value} contradicts the model's {getattr(base, name)}",
                              hint="the shape comes from the model you start from; leave the option out")


def union_vocab(base: Vocab, corpus: Vocab) -> Vocab:
    """The fine-tuned model's vocabulary: every character of the base's and of the corpus's."""
    if base.mode != corpus.mode:
        raise CharnnError(f"--init-from: the model reads {base.mode}s and the corpus was read as {corpus.mode}s",
                          hint="leave --bytes out" if base.mode == "char" else "add --bytes")
    if base.mode == "byte":
        return base
    return Vocab(mode="char", chars="".join(sorted(set(base.chars) | set(corpus.chars))))


def id_map(old: Vocab, new: Vocab) -> np.ndarray:
    """old id -> new id, for a vocabulary the new one contains."""
    if old.mode == "byte":
        return np.arange(256, dtype=np.int64)
    index = {char: i for i, char in enumerate(new.chars)}
    return np.array([index[char] for char in old.chars], dtype=np.int64)


def remap_tokens(tokens: np.ndarray, old: Vocab, new: Vocab, out: Path, chunk: int = 1 << 24) -> None:
    """Write `tokens` (ids of `old`) as ids of `new` into the .npy file `out`, a chunk at a time."""
    table = id_map(old, new).astype(new.dtype)
    array = np.lib.format.open_memmap(out, mode="w+", dtype=new.dtype, shape=(len(tokens),))
    for start in range(0, len(tokens), chunk):
        array[start : start + chunk] = table[np.asarray(tokens[start : start + chunk], dtype=np.int64)]
    array.flush()
    del array


def starting_state(base: Weights, vocab: Vocab, fresh: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The weights a fine-tuned model starts with: the base's everywhere, with the vocabulary's rows
    rearranged for `vocab`, the base's rows for the characters it knows and `fresh`'s (a new model's
    initial weights for `vocab`) for the others."""
    rows = id_map(base.vocab, vocab)
    state = {}
    for name, array in base.arrays.items():
        if name in VOCAB_ROWS:
            array = fresh[name].copy()
            array[rows] = base.arrays[name]
        state[name] = array
    return state


def added_chars(base: Vocab, vocab: Vocab) -> str:
    return "" if vocab.mode == "byte" else "".join(sorted(set(vocab.chars) - set(base.chars)))
