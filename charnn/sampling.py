"""Sampling: warm the state up on a prime, then generate one character at a time.

Each sampled character is fed back in as the next input. Generating one step
through nn.LSTM on a length-1 input is slow on the CPU (a heavyweight kernel
set up for every call), so `Stepper` runs the recurrence with the model's own
matrices, pre-arranged for one small matrix multiply per layer and step. Its
output equals the model's forward pass to floating-point rounding.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import Iterator, Sequence

import numpy as np
import torch

from .errors import CharnnError
from .model import CharRNN
from .vocab import Vocab


@dataclass(frozen=True)
class SamplingConfig:
    temperature: float = 1.0  # 1 samples the model's own distribution; 0 is greedy argmax
    top_k: int | None = None  # keep only the k most likely characters
    top_p: float | None = None  # keep the smallest set whose probability reaches p (nucleus)

    def validate(self, vocab_size: int) -> SamplingConfig:
        """Check every value; top_k above the vocabulary size is clamped to it."""
        if not (self.temperature >= 0 and np.isfinite(self.temperature)):
            raise CharnnError(f"--temp must be >= 0, not {self.temperature}", hint="use --temp 0 for greedy decoding")
        if self.top_k is not None and self.top_k < 1:
            raise CharnnError(f"--top-k must be at least 1, not {self.top_k}")
        if self.top_p is not None and not (0 < self.top_p <= 1):
            raise CharnnError(f"--top-p must be in (0, 1], not {self.top_p}")
        if self.top_k is not None and self.top_k > vocab_size:
            return SamplingConfig(self.temperature, vocab_size, self.top_p)
        return self


def filter_logits(logits: torch.Tensor, config: SamplingConfig) -> torch.Tensor:
    """Apply temperature, top-k and top-p to (B, V) logits; removed entries become -inf."""
    if config.temperature != 1.0:
        logits = logits / config.temperature
    if config.top_k is not None and config.top_k < logits.shape[-1]:
        kth = torch.topk(logits, config.top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, -torch.inf)
    if config.top_p is not None and config.top_p < 1:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        # drop a character when the ones more likely than it already reach top_p
        drop_sorted = probs.cumsum(dim=-1) - probs >= config.top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, -torch.inf)
    return logits


def sample_next(logits: torch.Tensor, config: SamplingConfig, generator: torch.Generator | None) -> torch.Tensor:
    """(B, V) logits -> (B,) ids."""
    if config.temperature == 0:
        return logits.argmax(dim=-1)
    return draw(filter_logits(logits.float(), config).softmax(dim=-1), generator)


def draw(probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One draw per row of (B, V) probabilities: the argmax of p / E with E ~ Exp(1).

    Row i wins with probability p_i (the smallest of exponentials with rates p_i), and a zero
    probability never wins. torch.multinomial does the same for one sample, at several times the
    cost per call, which matters when a step takes a fraction of a millisecond.
    """
    noise = torch.empty_like(probs).exponential_(generator=generator)
    return (probs / noise).argmax(dim=-1)


class Stepper:
    """One character at a time through the model, for sampling. State: a list, one entry per layer."""

    def __init__(self, model: CharRNN, logit_scale: float = 1.0):
        """`logit_scale` multiplies the logits for free (folded into the output layer): 1/temperature."""
        config = model.config
        # A one-row matrix product runs on one core in the CPU's BLAS; cut into one block of rows per
        # thread and run as a batched product, it uses every core (twice as fast on two, at any batch).
        on_cpu = model.head.weight.device.type == "cpu"
        self.blocks = max(torch.get_num_threads(), 1) if on_cpu else 1
        self.cell = config.cell
        self.hidden_size = H = config.hidden_size
        rnn = model.rnn
        with torch.no_grad():
            embedding = model.embedding.weight.detach()
            self.layers = []
            for layer in range(config.num_layers):
                w_ih = getattr(rnn, f"weight_ih_l{layer}").detach()
                w_hh = getattr(rnn, f"weight_hh_l{layer}").detach()
                b_ih = getattr(rnn, f"bias_ih_l{layer}").detach()
                b_hh = getattr(rnn, f"bias_hh_l{layer}").detach()
                if self.cell == "lstm":
                    # torch's gate order is i, f, g, o; i, f, o first lets one sigmoid cover three gates
                    order = torch.cat([torch.arange(0, 2 * H), torch.arange(3 * H, 4 * H), torch.arange(2 * H, 3 * H)])
                    w_ih, w_hh, b_ih, b_hh = w_ih[order], w_hh[order], b_ih[order], b_hh[order]
                # matrices stay (out, in), used transposed: for one stream the multiply is then a
                # row-by-row dot product, the fastest way to stream the weights through the cache
                if self.cell == "gru":  # r and z sum both halves; n needs W_hn h kept apart
                    self.layers.append(self._gru_layer(layer, embedding, w_ih, w_hh, b_ih, b_hh))
                elif layer == 0:
                    # the first layer's input term depends only on the character: precompute it per character
                    table = torch.addmm(b_ih + b_hh, embedding, w_ih.t())  # (V, gates)
                    self.layers.append({"table": table.contiguous(), "w_hh": w_hh.contiguous()})
                else:
                    w_cat = torch.cat([w_ih, w_hh], dim=1).contiguous()  # (gates, [x, h])
                    self.layers.append({"bias": (b_ih + b_hh).contiguous(), "w_cat": w_cat})
            self.head_w = (model.head.weight.detach() * logit_scale).contiguous()
            self.head_b = (model.head.bias.detach() * logit_scale).contiguous()

    @staticmethod
    def _gru_layer(layer, embedding, w_ih, w_hh, b_ih, b_hh) -> dict:
        if layer == 0:
            return {"table": torch.addmm(b_ih, embedding, w_ih.t()).contiguous(),
                    "w_hh": w_hh.contiguous(), "b_hh": b_hh.contiguous()}
        return {"w_ih": w_ih.contiguous(), "b_ih": b_ih.contiguous(),
                "w_hh": w_hh.contiguous(), "b_hh": b_hh.contiguous()}

    def state_from_hidden(self, hidden) -> list:
        """nn.LSTM/GRU hidden state (num_layers, B, H) -> the stepper's per-layer list."""
        if self.cell == "lstm":
            h, c = hidden
            return [(h[i].contiguous(), c[i].contiguous()) for i in range(h.shape[0])]
        return [hidden[i].contiguous() for i in range(hidden.shape[0])]

    def hidden_from_state(self, state: list):
        if self.cell == "lstm":
            return torch.stack([h for h, _ in state]), torch.stack([c for _, c in state])
        return torch.stack(state)

    def __call__(self, ids: torch.Tensor, state: list) -> tuple[torch.Tensor, list]:
        """ids (B,) -> logits (B, V) and the new state."""
        step = {"lstm": self._lstm, "gru": self._gru, "rnn": self._rnn}[self.cell]
        x = None
        new_state = []
        for index, (params, layer_state) in enumerate(zip(self.layers, state)):
            x, layer_state = step(params, ids if index == 0 else None, x, layer_state)
            new_state.append(layer_state)
        return torch.addmm(self.head_b, x, self.head_w.t()), new_state

    def _affine(self, bias: torch.Tensor, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """bias + x @ w.T for w (N, K) and x (B, K); bias (N,) or (B, N)."""
        P = self.blocks
        if P == 1 or w.shape[0] % P:
            return torch.addmm(bias, x, w.t())
        B, n = x.shape[0], w.shape[0] // P
        bias = bias.view(P, 1, n) if bias.dim() == 1 else bias.view(B, P, n).transpose(0, 1)
        out = torch.baddbmm(bias, x.expand(P, B, x.shape[1]), w.view(P, n, w.shape[1]).transpose(1, 2))
        return out.transpose(0, 1).reshape(B, P * n)

    def _lstm(self, p, ids, x, state):
        h, c = state
        if ids is not None:
            gates = self._affine(p["table"][ids], h, p["w_hh"])
        else:
            gates = self._affine(p["bias"], torch.cat([x, h], dim=1), p["w_cat"])
        H = self.hidden_size
        ifo = torch.sigmoid(gates[:, : 3 * H])
        g = torch.tanh(gates[:, 3 * H :])
        c = torch.addcmul(ifo[:, H : 2 * H] * c, ifo[:, :H], g)
        h = ifo[:, 2 * H :] * torch.tanh(c)
        return h, (h, c)

    def _gru(self, p, ids, x, h):
        gi = p["table"][ids] if ids is not None else self._affine(p["b_ih"], x, p["w_ih"])
        gh = self._affine(p["b_hh"], h, p["w_hh"])
        H = self.hidden_size
        rz = torch.sigmoid(gi[:, : 2 * H] + gh[:, : 2 * H])
        n = torch.tanh(torch.addcmul(gi[:, 2 * H :], rz[:, :H], gh[:, 2 * H :]))
        h = torch.addcmul(n, rz[:, H:], h - n)  # (1 - z) * n + z * h
        return h, h

    def _rnn(self, p, ids, x, h):
        if ids is not None:
            pre = self._affine(p["table"][ids], h, p["w_hh"])
        else:
            pre = self._affine(p["bias"], torch.cat([x, h], dim=1), p["w_cat"])
        h = torch.tanh(pre)
        return h, h


def default_prime(vocab: Vocab) -> list[int]:
    """Without a prime, start where texts usually do: after a newline (else the first character)."""
    if vocab.mode == "byte":
        return [ord("\n")]
    index = vocab.chars.find("\n")
    return [index if index >= 0 else 0]


def make_generator(seed: int | None, device: torch.device) -> torch.Generator:
    generator = torch.Generator(device=device)
    generator.manual_seed(seed if seed is not None else int.from_bytes(os.urandom(8), "little") >> 1)
    return generator


@torch.inference_mode()
def generate(
    model: CharRNN,
    prime: Sequence[int] | np.ndarray,
    length: int,
    config: SamplingConfig = SamplingConfig(),
    num_samples: int = 1,
    seed: int | None = None,
) -> Iterator[torch.Tensor]:
    """Yield `length` steps of (num_samples,) character ids that follow `prime`.

    The prime (at least one id) is read in one pass of the model's own forward;
    then every sampled id is fed back in to produce the next.
    """
    if len(prime) == 0:
        raise CharnnError("the prime is empty", hint="give at least one character, or none to use the default")
    model.eval()
    device = model.head.weight.device
    config = config.validate(model.config.vocab_size)
    generator = make_generator(seed, device)
    prime_ids = torch.as_tensor(np.asarray(prime, dtype=np.int64), device=device)
    logits, hidden = model(prime_ids.view(-1, 1).expand(-1, num_samples))  # (P, B, V)
    if config.temperature > 0:  # fold 1/temperature into the output layer once, not into every step
        scale = 1.0 / config.temperature
        logits = logits[-1] * scale
        config = replace(config, temperature=1.0)
    else:
        scale, logits = 1.0, logits[-1]
    stepper = Stepper(model, logit_scale=scale)
    state = stepper.state_from_hidden(hidden)
    for i in range(length):
        ids = sample_next(logits, config, generator)
        yield ids
        if i + 1 < length:
            logits, state = stepper(ids, state)
