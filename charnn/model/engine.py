"""A trained model's recurrence in numpy: what samples on the CPU, without PyTorch.

The weights are PyTorch's own (the names and shapes of `CharRNN.state_dict()`, as best.safetensors
stores them), arranged once for numpy's BLAS:

- Arrays are feature-major, (features, B): a product is W @ x, one matrix-vector product per
  layer and step for one stream, which numpy's BLAS runs at the cache's read speed.
- An LSTM's gate rows are reordered from torch's i, f, g, o to i, f, o, g, and the rows of every
  sigmoid gate are halved: sigmoid(x) = (tanh(x / 2) + 1) / 2, so one tanh covers every gate
  (numpy has no sigmoid, and exp would overflow for large inputs). Halving is exact in floating point.
- The first layer's input term depends only on the character: bias + W_ih e_c is a table row.
- Later layers multiply [W_ih | W_hh] by [x; h] in one product when stepping one character; when
  reading a prime, W_ih X for a whole stretch of text is one matrix product and only W_hh h is left
  per step.

State: a list with one entry per layer, (h, c) for an LSTM, h otherwise, each (H, B) float32.
Streams are columns: selecting, joining and zeroing them is column work (`select`, `join`, `zero`), so
a batch can gain and lose streams between steps (`charnn.generate.streams`, which steps a model through
this interface whatever computes it: here, or PyTorch's stepper on a GPU).

BLAS's threads follow charnn's thread policy (charnn.runtime.threads), one policy for each width class of
batch (1, 2-3, 4-7, 8-15 and 16 or more streams: a server's batch changes width as requests come and
go, and what one stream's steps taught a policy held 8 streams on one thread, 40% slower, after a
client alone), each timing the steps it runs. They start where measurements put them on an idle machine: fewer
than MANY_STREAMS streams on one thread (their products take a fraction of a millisecond, and handing
part of one to a second thread costs more: on our 2-core CI machine, a VM, a product numpy's OpenBLAS
split between two threads took up to 8 ms, where one thread takes 0.08 ms), more on all threads (for a
2x512 LSTM there, 16 streams sampled 7,200 characters a second on two threads against 4,700 on one, 64
streams 10,900 against 7,500; scripts/steppers.py). On a busy machine the policy finds otherwise: 32
streams on two threads fell from 43,900 characters a second to 1,830 beside a busy neighbour. OpenBLAS
splits its products between threads without splitting their sums, so the text is the same whatever the
count.
"""

from __future__ import annotations

import threading
from time import perf_counter
from typing import Mapping

import numpy as np
from threadpoolctl import ThreadpoolController

from ..config import ModelConfig
from ..runtime.contention import watch_cores
from ..runtime.threads import ThreadChoice, ThreadPolicy, resolve_threads

READ_CHUNK = 1024  # prime characters per stretch: bounds the memory of a long prime's input terms
# and the bytes of a stretch's input terms and outputs over all its streams: 64 requests of 16 choices
# reading a 100-character prompt together (a server's storm) took 500 MB in one stretch
READ_BYTES = 16 * 2**20


def _f32(array) -> np.ndarray:
    return np.ascontiguousarray(array, dtype=np.float32)


class BlasThreads:
    """numpy's BLAS thread pool. Inside a `with` block `set(n)` sizes it; after the outermost block ends
    it is as it was before. BLAS has one thread pool per process, so the count of open blocks is the
    process's too (class attributes): blocks of several engines, or of generators suspended in between,
    may end in any order. Setting the pool costs microseconds, and more when it grows back, so it is
    set only when the count changes and a block spans a whole prime or a whole `Streams.sample`."""

    _open = 0  # blocks open in this process
    _saved: list = []  # the pool sizes before the first of them
    _current: int | None = None  # the size set inside the blocks
    _limit: int | None = None  # the most any `set` may ask for (a server's engine sharing the cores with others)
    _working = 0  # threads of this process between `working()` and `resting()`
    _guard = threading.Lock()

    def __init__(self):
        self.libraries = ThreadpoolController().select(user_api="blas").lib_controllers

    def __enter__(self) -> BlasThreads:
        if BlasThreads._open == 0:
            BlasThreads._saved = [(library, library.get_num_threads()) for library in self.libraries]
            BlasThreads._current = None
        BlasThreads._open += 1
        return self

    def limit(self, threads: int | None) -> None:
        """Hold every later `set` to at most `threads` (None: no limit), whoever asks: a policy, a read."""
        BlasThreads._limit = threads

    def set(self, threads: int) -> None:
        threads = threads if BlasThreads._limit is None else min(threads, BlasThreads._limit)
        if threads != BlasThreads._current and BlasThreads._open:
            for library in self.libraries:
                library.set_num_threads(threads)
            BlasThreads._current = threads

    def working(self) -> None:
        """This thread is about to use BLAS: its threads may be started again."""
        with BlasThreads._guard:
            BlasThreads._working += 1

    def resting(self) -> None:
        """This thread has nothing to compute for now. When no thread of the process has, BLAS's threads are
        stopped: OpenBLAS's spin for a tenth of a second after each product before they sleep, a core a
        server's worker and clients then wait for (a lone request's first character: 4.9 ms, against 2.6
        with one thread), and a core of an idle server's burnt after every request. Starting them again
        costs the next product a few hundred microseconds. BLAS libraries other than OpenBLAS: nothing."""
        with BlasThreads._guard:
            BlasThreads._working -= 1
            if BlasThreads._working == 0:
                for library in self.libraries:
                    stop = getattr(getattr(library, "dynlib", None), "blas_thread_shutdown_", None)
                    if library.internal_api == "openblas" and stop is not None:
                        stop()

    def __exit__(self, *exc) -> None:
        BlasThreads._open -= 1
        if BlasThreads._open == 0:
            for library, threads in BlasThreads._saved:
                if threads is not None:
                    library.set_num_threads(threads)
            BlasThreads._current = None


MANY_STREAMS = 16  # from this many streams up, a policy starts at all threads; below, at one


class Engine:
    """The network of a `ModelConfig` on numpy arrays: `step` one character per stream, `read` a
    stretch of text. Equal to the PyTorch model's forward pass to floating-point rounding."""

    device = "cpu"

    def __init__(self, config: ModelConfig, weights: Mapping[str, np.ndarray], threads: ThreadChoice | None = None):
        """`threads`: who decides BLAS's thread count (default: charnn.runtime.threads' choice from the environment)."""
        self.config = config
        self.threads = threads or resolve_threads()
        self.pool = BlasThreads()
        self._policies: dict[int, ThreadPolicy] = {}
        self.cell = config.cell
        self.hidden_size = config.hidden_size
        self.vocab_size = config.vocab_size
        self.layers = [self._arrange(layer, weights) for layer in range(config.num_layers)]
        self.head_w = _f32(weights["head.weight"])
        self.head_b = _f32(weights["head.bias"])[:, None]
        self._cell = {"lstm": self._lstm, "gru": self._gru, "rnn": self._rnn}[self.cell]

    def _gate_arrays(self, layer: int, weights: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """(w_ih, w_hh, b_ih, b_hh) of a layer, rows reordered (LSTM) and sigmoid rows halved."""
        arrays = [_f32(weights[f"rnn.{kind}_l{layer}"]) for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
        H = self.hidden_size
        if self.cell == "lstm":
            order = np.concatenate([np.arange(0, 2 * H), np.arange(3 * H, 4 * H), np.arange(2 * H, 3 * H)])
            arrays = [a[order] for a in arrays]
        if self.cell != "rnn":
            scale = np.ones(arrays[1].shape[0], dtype=np.float32)
            scale[: (3 if self.cell == "lstm" else 2) * H] = 0.5
            arrays = [a * (scale[:, None] if a.ndim == 2 else scale) for a in arrays]
        return arrays

    def _arrange(self, layer: int, weights: Mapping[str, np.ndarray]) -> dict:
        w_ih, w_hh, b_ih, b_hh = self._gate_arrays(layer, weights)
        if self.cell == "gru":  # r and z sum both halves; n needs W_hn h + b_hn kept apart
            params = {"w_hh": w_hh, "b_hh": b_hh[:, None], "b_ih": b_ih[:, None], "w_ih": w_ih}
            if layer == 0:
                params["table"] = _f32(_f32(weights["embedding.weight"]) @ w_ih.T + b_ih)
            return params
        bias = b_ih + b_hh
        if layer == 0:  # (V, gates): a character's row is its whole input term
            return {"table": _f32(_f32(weights["embedding.weight"]) @ w_ih.T + bias), "w_hh": w_hh}
        w_cat = _f32(np.concatenate([w_ih, w_hh], axis=1))
        inputs = w_ih.shape[1]  # w_ih and w_hh as views of w_cat, for reading a prime
        return {"w_cat": w_cat, "bias": bias[:, None], "w_ih": w_cat[:, :inputs], "w_hh": w_cat[:, inputs:]}

    # --- state -------------------------------------------------------------------------------

    def zero_state(self, streams: int) -> list:
        H = self.hidden_size
        if self.cell == "lstm":
            return [(np.zeros((H, streams), np.float32), np.zeros((H, streams), np.float32)) for _ in self.layers]
        return [np.zeros((H, streams), np.float32) for _ in self.layers]

    def select(self, state: list, columns: np.ndarray) -> list:
        """The state of these streams, in this order (beam search: each beam continues its parent)."""
        return [tuple(t[:, columns] for t in s) if isinstance(s, tuple) else s[:, columns] for s in state]

    def join(self, first: list, second: list) -> list:
        """Two states side by side: the streams of `first`, then those of `second`."""
        return [tuple(np.concatenate(pair, axis=1) for pair in zip(a, b)) if isinstance(a, tuple)
                else np.concatenate((a, b), axis=1) for a, b in zip(first, second)]

    def zero(self, state: list, mask: np.ndarray) -> list:
        """The state with the streams where `mask` (B,) is true back at zero (a record starts)."""
        if not mask.any():
            return state
        return [_keep_streams(s, ~mask) for s in state]

    # --- one character per stream --------------------------------------------------------------

    def step(self, ids: np.ndarray, state: list) -> tuple[np.ndarray, list]:
        """ids (B,) -> the next character's logits (B, V) and the new state. Steps run inside the
        caller's `with engine.pool:` (`Streams.sample` opens one for all of its steps)."""
        x = None
        new_state = []
        for index, (params, layer_state) in enumerate(zip(self.layers, state)):
            x, layer_state = self._cell(params, self._gates(index, params, ids, x, layer_state), layer_state)
            new_state.append(layer_state)
        return self.logits(x), new_state

    def _gates(self, index: int, params: dict, ids: np.ndarray, x: np.ndarray | None, layer_state) -> np.ndarray:
        """What the cell takes, (gates, B): for an LSTM or RNN every gate's W_ih x + W_hh h + b; for a
        GRU the input term W_ih x + b_ih alone (its cell adds the recurrent term)."""
        if index == 0:
            gi = params["table"][ids].T
            return gi if self.cell == "gru" else self._recurrent(params, gi, layer_state)
        if self.cell == "gru":
            gi = params["w_ih"] @ x
            gi += params["b_ih"]
            return gi
        h = layer_state[0] if self.cell == "lstm" else layer_state
        gates = params["w_cat"] @ np.concatenate((x, h))  # the input and recurrent terms from one product
        gates += params["bias"]
        return gates

    def logits(self, x: np.ndarray) -> np.ndarray:
        """The output layer on the last layer's h (H, B): (B, V)."""
        logits = self.head_w @ x
        logits += self.head_b
        return logits.T

    def _recurrent(self, params: dict, gi: np.ndarray, layer_state) -> np.ndarray:
        """W_hh h + the input term, for an LSTM or a plain RNN."""
        h = layer_state[0] if self.cell == "lstm" else layer_state
        gates = params["w_hh"] @ h
        gates += gi
        return gates

    def _lstm(self, params, gates, state):
        _, c = state
        H = self.hidden_size
        np.tanh(gates, out=gates)
        ifo = gates[: 3 * H]
        ifo *= 0.5
        ifo += 0.5
        i, f, o, g = gates[:H], gates[H : 2 * H], gates[2 * H : 3 * H], gates[3 * H :]
        c = f * c
        i *= g
        c += i
        h = np.tanh(c)
        h *= o
        return h, (h, c)

    def _gru(self, params, gi, h):
        """`gi`: the input term W_ih x + b_ih, (3H, B)."""
        H = self.hidden_size
        gh = params["w_hh"] @ h
        gh += params["b_hh"]
        rz = gi[: 2 * H] + gh[: 2 * H]
        np.tanh(rz, out=rz)
        rz *= 0.5
        rz += 0.5
        n = gh[2 * H :]
        n *= rz[:H]
        n += gi[2 * H :]
        np.tanh(n, out=n)
        h = h - n
        h *= rz[H:]
        h += n  # (1 - z) * n + z * h
        return h, h

    def _rnn(self, params, gates, h):
        h = np.tanh(gates)
        return h, h

    def _trial(self, threads: int) -> float:
        """Seconds for 8 small products on `threads` BLAS threads (about a millisecond when idle)."""
        self.pool.set(threads)
        a = np.ones((1024, 256), np.float32)
        b = np.ones((256, 32), np.float32)
        started = perf_counter()
        for _ in range(8):
            a @ b
        return perf_counter() - started

    def policy_for(self, streams: int) -> ThreadPolicy:
        """The thread policy for stepping this many streams: one for each width class, powers of two up to
        MANY_STREAMS (each of the engine's life), whose counts apply inside `with engine.pool:`."""
        width = min(max(1, streams), MANY_STREAMS).bit_length()
        if width not in self._policies:
            initial = max(self.threads.candidates) if streams >= MANY_STREAMS else min(self.threads.candidates)
            self._policies[width] = ThreadPolicy(self.threads, self.pool.set, initial=initial, trial=self._trial,
                                                 watch=watch_cores)
        return self._policies[width]

    # --- a stretch of text -------------------------------------------------------------------

    def read(self, ids: np.ndarray, state: list, resets: np.ndarray | None = None) -> tuple[np.ndarray, list]:
        """Read ids (T, B), T >= 1, after `state`: the logits (B, V) of what follows the last one, and
        the state. `resets` (T, B) marks the steps whose incoming state is zeroed first (--reset-on)."""
        with self.pool:
            self.pool.set(self.policy_for(ids.shape[1]).threads)
            per_step = ids.shape[1] * (self.layers[0]["table"].shape[1] + self.hidden_size) * 4
            stretch = max(1, min(READ_CHUNK, READ_BYTES // per_step))
            for start in range(0, len(ids), stretch):
                chunk = slice(start, start + stretch)
                x, state = self._read_chunk(ids[chunk], state, None if resets is None else resets[chunk])
            return self.logits(x), state

    def _read_chunk(self, ids: np.ndarray, state: list, resets: np.ndarray | None) -> tuple[np.ndarray, list]:
        """One layer at a time: its input terms for every step in one product, then the recurrence."""
        restarts = {} if resets is None else {t: ~resets[t] for t in np.flatnonzero(resets.any(axis=1))}
        outputs, new_state = None, []
        for index, (params, layer_state) in enumerate(zip(self.layers, state)):
            if index == 0:
                inputs = params["table"][ids]  # (T, B, gates)
            else:  # one product for the whole stretch, not one per step
                inputs = (outputs.reshape(-1, outputs.shape[2]) @ params["w_ih"].T).reshape(ids.shape + (-1,))
                inputs += params["b_ih"][:, 0] if self.cell == "gru" else params["bias"][:, 0]
            outputs = np.empty(ids.shape + (self.hidden_size,), np.float32)  # (T, B, H)
            for t in range(len(ids)):
                if t in restarts:
                    layer_state = _keep_streams(layer_state, restarts[t])
                gi = inputs[t].T
                gates = gi if self.cell == "gru" else self._recurrent(params, gi, layer_state)
                h, layer_state = self._cell(params, gates, layer_state)
                outputs[t] = h.T
            new_state.append(layer_state)
        return h, new_state


def _keep_streams(layer_state, keep: np.ndarray):
    """A layer's state with the streams not in `keep` (B,) zeroed."""
    if isinstance(layer_state, tuple):
        return tuple(s * keep for s in layer_state)
    return layer_state * keep

