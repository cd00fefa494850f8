"""Looking inside a model: how surprised it is at each character, and what each hidden unit tracks.

`trace_text` reads a text as one stream, the hidden state carried from the first character and
dropout off (what `evaluate` scores), and keeps for every character the loss of predicting it, the
model's likeliest guesses for it and, if asked, one hidden unit's activation. `find_neurons`
correlates every unit of every layer with simple features of the text (inside quotes, column, ...).

nn.LSTM returns only the last layer's outputs, so `layer_states` runs the layers one at a time on
the model's own parameters and kernels. Texts are read `window` characters at a time, so memory
stays bounded whatever the length. Layers and units count from 0, as in PyTorch (`weight_hh_l0`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..config import ModelConfig
from ..data.batches import reset_mask
from ..data.vocab import Vocab
from ..errors import CharnnError
from ..model.network import CharRNN, Hidden, reset_segments, reset_streams
from ..units import LN2
from .score import split_into_pieces, warm_start


def layer_states(model: CharRNN, idx: torch.Tensor, hidden: Hidden | None = None,
                 resets: torch.Tensor | None = None):
    """`model(idx, hidden, resets)` with dropout off, also returning every layer's outputs.

    idx (T, B) -> logits (T, B, V), [h of layer l: (T, B, H)] * num_layers, the new hidden state.
    """
    if hidden is None:
        hidden = model.init_hidden(idx.shape[1], idx.device)
    if resets is None or not bool(resets.any()):
        return _layer_states(model, idx, hidden)
    pieces = []
    for start, end, restart in reset_segments(resets):  # as the model does: cut where a stream resets
        if restart is not None:
            hidden = reset_streams(hidden, restart)
        logits, outputs, hidden = _layer_states(model, idx[start:end], hidden)
        pieces.append((logits, outputs))
    logits = torch.cat([p[0] for p in pieces])
    outputs = [torch.cat([p[1][layer] for p in pieces]) for layer in range(model.config.num_layers)]
    return logits, outputs, hidden


def _layer_states(model: CharRNN, idx: torch.Tensor, hidden: Hidden):
    c = model.config
    x = model.embedding(idx)  # (T, B, E)
    outputs, finals = [], []
    for layer in range(c.num_layers):
        x, final = model.run_layer(layer, x, hidden)
        outputs.append(x)
        finals.append(final)
    hidden = model.join_layer_states(finals)
    return model.head(x), outputs, hidden


def _resets(model: CharRNN, ids: torch.Tensor) -> torch.Tensor | None:
    """With a --reset-on model: where the state restarts along `ids` (time first), as in evaluation."""
    return reset_mask(ids, model.config.reset_ids) if model.config.reset_ids else None


def _window(resets: torch.Tensor | None, start: int, end: int) -> torch.Tensor | None:
    """Those resets for one stream's window, shaped (T, 1) like its ids."""
    return None if resets is None else resets[start:end].view(-1, 1)


def _ids(model: CharRNN, tokens) -> torch.Tensor:
    device = model.head.weight.device
    return torch.as_tensor(np.asarray(tokens).astype(np.int64), device=device)


# --- per-character surprise --------------------------------------------------------------------


@dataclass(frozen=True)
class CharTrace:
    """What the model made of each character of a text (N characters, k guesses)."""

    tokens: np.ndarray  # (N,) ids of the text
    losses: np.ndarray  # (N,) nats of predicting each character from those before it; NaN for the first
    top_ids: np.ndarray  # (N, k) the model's k likeliest guesses for each character, best first; -1 for the first
    top_probs: np.ndarray  # (N, k) their probabilities
    neuron: tuple[int, int] | None = None  # (layer, unit) whose activations were kept
    activations: np.ndarray | None = None  # (N,) that unit's h after reading each character

    @property
    def bits(self) -> np.ndarray:
        return self.losses / LN2

    @property
    def mean_loss(self) -> float:
        """Mean nats per scored character (every character but the first), as `evaluate` reports."""
        return float(np.mean(self.losses[1:], dtype=np.float64)) if len(self.losses) > 1 else math.nan


@torch.inference_mode()
def trace_text(model: CharRNN, tokens, top_k: int = 3, neuron: tuple[int, int] | None = None,
               window: int = 256) -> CharTrace:
    """Per-character losses and top guesses for `tokens` (and one unit's activations, if `neuron`)."""
    ids = _ids(model, tokens)
    n = len(ids)
    if neuron is not None:
        check_neuron(model.config, neuron)
    k = max(1, min(top_k, model.config.vocab_size))
    losses = np.full(n, np.nan, dtype=np.float32)
    top_ids = np.full((n, k), -1, dtype=np.int64)
    top_probs = np.zeros((n, k), dtype=np.float32)
    activations = np.zeros(n, dtype=np.float32) if neuron is not None else None
    hidden, resets = None, _resets(model, ids)
    for start in range(0, n, window):
        chunk = ids[start : start + window]
        logits, outputs, hidden = layer_states(model, chunk.view(-1, 1), hidden,
                                               _window(resets, start, start + len(chunk)))
        if activations is not None:
            activations[start : start + len(chunk)] = outputs[neuron[0]][:, 0, neuron[1]].float().cpu().numpy()
        # logits[t] predicts character start + t + 1; the text's last character predicts nothing
        targets = ids[start + 1 : start + 1 + len(chunk)]
        log_probs = torch.log_softmax(logits[: len(targets), 0].float(), dim=-1)  # (T, V)
        scored = slice(start + 1, start + 1 + len(targets))
        losses[scored] = (-log_probs.gather(1, targets.view(-1, 1))[:, 0]).cpu().numpy()
        best = log_probs.topk(k, dim=-1)
        top_ids[scored] = best.indices.cpu().numpy()
        top_probs[scored] = best.values.exp().cpu().numpy()
    return CharTrace(np.asarray(tokens).astype(np.int64), losses, top_ids, top_probs, neuron, activations)


@torch.inference_mode()
def hidden_activations(model: CharRNN, tokens, window: int = 256) -> np.ndarray:
    """h of every layer after each character of `tokens`, read as one stream: (layers, N, hidden)."""
    ids = _ids(model, tokens)
    c = model.config
    out = np.zeros((c.num_layers, len(ids), c.hidden_size), dtype=np.float32)
    hidden, resets = None, _resets(model, ids)
    for start in range(0, len(ids), window):
        chunk = ids[start : start + window]
        _, outputs, hidden = layer_states(model, chunk.view(-1, 1), hidden, _window(resets, start, start + len(chunk)))
        for layer, h in enumerate(outputs):
            out[layer, start : start + len(chunk)] = h[:, 0].float().cpu().numpy()
    return out


# --- single units --------------------------------------------------------------------------------


def check_neuron(config: ModelConfig, neuron: tuple[int, int], spec: str | None = None) -> tuple[int, int]:
    layer, unit = neuron
    spec = spec or f"{layer}:{unit}"
    if not 0 <= layer < config.num_layers:
        raise CharnnError(f"--neuron {spec}: no layer {layer}; this model's layers are 0..{config.num_layers - 1} "
                          "(layers and units count from 0)")
    if not 0 <= unit < config.hidden_size:
        raise CharnnError(f"--neuron {spec}: no unit {unit}; each layer's units are 0..{config.hidden_size - 1} "
                          "(layers and units count from 0)")
    return layer, unit


def parse_neuron(spec: str, config: ModelConfig) -> tuple[int, int]:
    """'LAYER:UNIT', both counted from 0, -> (layer, unit), checked against the model."""
    layer_text, colon, unit_text = spec.strip().partition(":")
    try:
        if not colon:
            raise ValueError
        neuron = int(layer_text), int(unit_text)
    except ValueError:
        raise CharnnError(f"--neuron {spec!r}: expected LAYER:UNIT such as 0:17 "
                          "(layers and units count from 0)") from None
    return check_neuron(config, neuron, spec)


# --- features of the text, and the units that track them -----------------------------------------

FEATURES = {
    "inside_quotes": 'between a " and the next one (counting restarts at a blank line)',
    "column": "characters so far on the line: the position in it",
    "indentation": "spaces and tabs at the start of the line",
    "inside_parens": "inside ( ), at any depth",
}


def code_points(tokens, vocab: Vocab) -> np.ndarray:
    """The code point of each token (the byte itself for a byte-level vocabulary)."""
    tokens = np.asarray(tokens).astype(np.int64)
    if vocab.mode == "byte":
        return tokens
    table = np.frombuffer(vocab.chars.encode("utf-32-le", "surrogatepass"), dtype="<u4").astype(np.int64)
    return table[tokens]


def _since_line_start(values: np.ndarray, newline: np.ndarray) -> np.ndarray:
    """Running sum of `values` restarted after each newline (a newline itself counts 0)."""
    totals = np.cumsum(values)
    last = np.maximum.accumulate(np.where(newline, np.arange(len(values)), -1))
    return totals - np.where(last >= 0, totals[np.maximum(last, 0)], 0)


def text_features(points: np.ndarray) -> dict[str, np.ndarray]:
    """Each feature of FEATURES as it stands after reading each character: {name: (N,) float}."""
    points = np.asarray(points)
    n = len(points)
    index = np.arange(n)
    newline = points == ord("\n")
    # quotes: parity of the '"' seen since the last blank line
    quote = (points == ord('"')).astype(np.int64)
    blank = newline & np.concatenate([[False], newline[:-1]])
    last_blank = np.maximum.accumulate(np.where(blank, index, -1))
    quotes = np.cumsum(quote)
    inside_quotes = (quotes - np.where(last_blank >= 0, quotes[np.maximum(last_blank, 0)], 0)) % 2
    column = _since_line_start(np.ones(n, dtype=np.int64), newline)
    space = (points == ord(" ")) | (points == ord("\t"))
    content = ~space & ~newline
    leading = space & (_since_line_start(content.astype(np.int64), newline) == 0)
    indentation = _since_line_start(leading.astype(np.int64), newline)
    # nesting depth that never goes below 0: a stray ')' does not make the next '(' look closed
    depth = np.cumsum((points == ord("(")).astype(np.int64) - (points == ord(")")))
    depth = depth - np.minimum(np.minimum.accumulate(depth), 0) if n else depth
    return {"inside_quotes": inside_quotes.astype(np.float64), "column": column.astype(np.float64),
            "indentation": indentation.astype(np.float64), "inside_parens": (depth > 0).astype(np.float64)}


@dataclass(frozen=True)
class NeuronMatch:
    feature: str
    layer: int
    unit: int
    correlation: float  # Pearson correlation of the unit's activation with the feature

    def to_dict(self) -> dict:
        return {"neuron": f"{self.layer}:{self.unit}", "layer": self.layer, "unit": self.unit,
                "correlation": round(self.correlation, 4)}


@dataclass(frozen=True)
class NeuronReport:
    chars: int  # characters read
    best: dict[str, list[NeuronMatch]]  # feature -> units with the largest |correlation|, best first
    constant: tuple[str, ...]  # features that never change on this text (no correlation to find)

    def to_dict(self) -> dict:
        return {"chars": self.chars,
                "features": {name: [m.to_dict() for m in matches] for name, matches in self.best.items()},
                "constant_features": list(self.constant)}


class _Correlation:
    """Pearson correlation of every unit with every feature, from running sums (float64)."""

    def __init__(self, units: int, features: int, device):
        options = {"dtype": torch.float64, "device": device}
        self.n = 0
        self.sum_a, self.sum_aa = torch.zeros(units, **options), torch.zeros(units, **options)
        self.sum_f, self.sum_ff = torch.zeros(features, **options), torch.zeros(features, **options)
        self.sum_af = torch.zeros(units, features, **options)

    def add(self, a: torch.Tensor, f: torch.Tensor) -> None:
        """a (M, units), f (M, features)."""
        a, f = a.double(), f.double()
        self.n += a.shape[0]
        self.sum_a += a.sum(0)
        self.sum_aa += (a * a).sum(0)
        self.sum_f += f.sum(0)
        self.sum_ff += (f * f).sum(0)
        self.sum_af += a.t() @ f

    def result(self) -> np.ndarray:
        """(units, features); NaN where a unit or a feature never changes."""
        n = max(self.n, 1)
        cov = self.sum_af / n - torch.outer(self.sum_a / n, self.sum_f / n)
        var_a = (self.sum_aa / n - (self.sum_a / n) ** 2).clamp_min(0)
        var_f = (self.sum_ff / n - (self.sum_f / n) ** 2).clamp_min(0)
        scale = torch.outer(var_a, var_f).sqrt()
        return torch.where(scale > 1e-12, cov / scale, torch.nan).cpu().numpy()


@torch.inference_mode()
def find_neurons(model: CharRNN, vocab: Vocab, tokens, max_chars: int | None = 200_000, top: int = 3,
                 num_streams: int = 16, burn_in: int = 256, window: int = 256) -> NeuronReport:
    """The units (all layers) whose activations correlate best with each feature in FEATURES.

    Reads the first `max_chars` characters as `num_streams` contiguous pieces side by side, each
    warmed up on the `burn_in` characters before it, as `evaluate` does.
    """
    tokens = np.asarray(tokens)[:max_chars]
    c = model.config
    device = model.head.weight.device
    features = text_features(code_points(tokens, vocab))
    names = list(features)
    streams, piece = split_into_pieces(len(tokens), num_streams, burn_in)
    ids = _ids(model, tokens)
    inputs = ids[: streams * piece].view(streams, piece).t()  # (piece, S)
    values = torch.as_tensor(np.stack([features[name] for name in names], axis=1), device=device)
    values = values[: streams * piece].view(streams, piece, len(names)).transpose(0, 1)  # (piece, S, F)
    resets = _resets(model, ids)
    laid_out = None if resets is None else resets[: streams * piece].view(streams, piece).t()
    hidden = warm_start(model, streams, piece, burn_in, lambda at: layer_states(
        model, ids[at], None, None if resets is None else resets[at])[2])
    stats = _Correlation(c.num_layers * c.hidden_size, len(names), device)
    for start in range(0, piece, window):
        _, outputs, hidden = layer_states(model, inputs[start : start + window], hidden,
                                          None if laid_out is None else laid_out[start : start + window])
        activations = torch.cat(outputs, dim=-1)  # (T, S, layers * hidden), layer-major
        stats.add(activations.reshape(-1, activations.shape[-1]), values[start : start + window].reshape(-1, len(names)))
    correlation = stats.result()  # (layers * hidden, F)
    best, constant = {}, []
    for column, name in enumerate(names):
        r = correlation[:, column]
        if np.isnan(r).all():
            constant.append(name)
            best[name] = []
            continue
        order = np.argsort(-np.nan_to_num(np.abs(r), nan=-1.0), kind="stable")[:top]
        best[name] = [NeuronMatch(name, int(i) // c.hidden_size, int(i) % c.hidden_size, float(r[i])) for i in order]
    return NeuronReport(chars=streams * piece, best=best, constant=tuple(constant))
