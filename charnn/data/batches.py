"""From a token array to training windows: the validation split and contiguous streams.

Truncated, stateful BPTT reads the training text as `batch_size` contiguous
streams, side by side, one window of `seq_len` at a time (time-major, like
pytorch/examples' word_language_model). With batch_size=2, seq_len=4:

    text:      a b c d e f g h i j k l m n o p q r s t u v w x y z
    streams:   a..m and n..z, drawn as rows (stored as the columns of a (time, batch) array)

                 window 0    window 1    window 2
    stream 0:  [ a b c d ] [ e f g h ] [ i j k l ] m
    stream 1:  [ n o p q ] [ r s t u ] [ v w x y ] z

    inputs  of window k = stream[k*T     : k*T + T]
    targets of window k = stream[k*T + 1 : k*T + T + 1]

So window k+1 starts on the character where window k's targets ended, and the
hidden state left by window k is exactly the context window k+1 needs.
Each epoch shifts where the streams start by a seeded offset in [0, seq_len),
so the truncation points differ from epoch to epoch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..errors import CharnnError

if TYPE_CHECKING:
    from .vocab import Vocab


@dataclass(frozen=True)
class TrainData:
    """What a run trains on: the vocabulary, the training and validation tokens, and where they came
    from (`corpus`: sources, fingerprint, sizes; saved with every checkpoint)."""

    vocab: Vocab
    train: np.ndarray
    val: np.ndarray
    corpus: dict | None = None


def split_train_val(tokens: np.ndarray, val_frac: float) -> tuple[np.ndarray, np.ndarray]:
    """The first (1 - val_frac) of the text for training, the last val_frac for validation."""
    n_train = int(round(len(tokens) * (1.0 - val_frac)))
    return tokens[:n_train], tokens[n_train:]


def check_split_sizes(train: np.ndarray, val: np.ndarray, batch_size: int, seq_len: int) -> None:
    """A corpus must hold one window for every stream in training and one window of validation."""
    need_train = batch_size * (seq_len + 1)
    if len(train) < need_train:
        raise CharnnError(
            f"corpus too small: the training split has {len(train):,} characters but "
            f"--batch-size {batch_size} x (--seq-len {seq_len} + 1) needs {need_train:,}",
            hint="use a larger corpus or a smaller --batch-size / --seq-len",
        )
    if len(val) < seq_len + 1:
        raise CharnnError(
            f"corpus too small: the validation split has {len(val):,} characters, "
            f"fewer than one window of --seq-len {seq_len} + 1",
            hint="use a larger corpus, a larger --val-frac or a smaller --seq-len",
        )


def epoch_offset(seed: int, epoch: int, seq_len: int) -> int:
    """Where the streams start in `epoch`: 0 for the first, then a seeded shift in [0, seq_len)."""
    if epoch == 0:
        return 0
    return int(np.random.default_rng([seed, epoch]).integers(seq_len))


class StreamBatches:
    """One epoch of windows over `tokens`, as (inputs, targets) of shape (seq_len, batch_size)."""

    def __init__(self, tokens: torch.Tensor, batch_size: int, seq_len: int, offset: int = 0):
        stream_len = (len(tokens) - offset) // batch_size
        # (stream_len, batch_size): column b is stream b, contiguous text top to bottom
        self.streams = tokens[offset : offset + stream_len * batch_size].view(batch_size, stream_len).t()
        self.seq_len = seq_len
        self.batch_size = batch_size
        self.num_windows = (stream_len - 1) // seq_len

    def __len__(self) -> int:
        return self.num_windows

    def window(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        start = k * self.seq_len
        chunk = self.streams[start : start + self.seq_len + 1].long()  # (T+1, B)
        return chunk[:-1], chunk[1:]

    def lookbehind(self, k: int, n: int) -> torch.Tensor:
        """The (up to) n tokens of every stream just before window k: (n', B)."""
        start = k * self.seq_len
        return self.streams[max(start - n, 0) : start].long()

    def resets(self, k: int, inputs: torch.Tensor, reset_ids: tuple[int, ...], streams: slice) -> torch.Tensor | None:
        """With --reset-on: where in window k (`inputs`, these `streams`) the state restarts; the
        delimiter may begin in window k-1."""
        if not reset_ids:
            return None
        return reset_mask(inputs, reset_ids, self.lookbehind(k, len(reset_ids) - 1)[:, streams])


def epoch_batches(tokens: torch.Tensor, batch_size: int, seq_len: int, seed: int, epoch: int) -> StreamBatches:
    """The windows of one epoch, its streams shifted by the epoch's seeded offset."""
    batches = StreamBatches(tokens, batch_size, seq_len, epoch_offset(seed, epoch, seq_len))
    if len(batches) == 0:  # a corpus just one window long has no room to shift the streams
        batches = StreamBatches(tokens, batch_size, seq_len, 0)
    return batches


def as_tensor(tokens: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """A token array as a 1-D tensor on `device`, without copying on the CPU where possible."""
    array = np.ascontiguousarray(tokens)
    if not array.flags.writeable:
        array = array.copy()
    # torch < 2.3 has no uint16/uint32 tensors, and off the CPU their support is thin: widen to a
    # signed type that holds every id (a copy; on the CPU, recent torch maps the file as it is)
    native = torch.device(device).type == "cpu" and hasattr(torch, "uint32")
    if array.dtype == np.uint16 and not native:
        array = array.astype(np.int32)
    elif array.dtype == np.uint32 and not native:
        array = array.astype(np.int64)
    return torch.from_numpy(array).to(device)


def reset_mask(tokens: torch.Tensor, reset_ids: tuple[int, ...], before: torch.Tensor | None = None) -> torch.Tensor:
    """True where tokens[t] (time first: (T,) or (T, B)) completes the delimiter `reset_ids`.

    `before` holds the tokens just before tokens[0] (same trailing shape), so a delimiter that
    straddles the start of a window is found; without them the match needs all its characters here.
    """
    mask = tokens == reset_ids[-1]
    full = tokens if before is None else torch.cat([before.to(tokens.dtype), tokens])
    context = len(full) - len(tokens)
    for back in range(1, len(reset_ids)):  # tokens[t - back] must be reset_ids[-1 - back]
        earlier = torch.zeros_like(mask)
        first = max(back - context, 0)
        if first < len(tokens):
            earlier[first:] = full[first + context - back : len(tokens) + context - back] == reset_ids[-1 - back]
        mask &= earlier
    return mask
