"""One character at a time through a trained model: the inner loop of sampling.

Stepping `nn.LSTM` on a length-1 input is slow on the CPU (a heavyweight kernel set up for every
call), so the steppers here run the recurrence with the model's own matrices, pre-arranged for
one matrix product per layer and step. Their output equals the model's forward pass to
floating-point rounding (a test checks every cell type).

- `Stepper` works on torch tensors, on any device.
- `BlasStepper` is for the CPU: the same arithmetic on numpy arrays. On one stream, a step is a
  few matrix-vector products and some twenty tiny element-wise operations. numpy's BLAS runs those
  products at the cache's read speed (twice torch's CPU kernels, measured on a 2-core AMD EPYC),
  and a numpy operation costs about a microsecond where a torch one costs three to five. Its `step`
  takes and gives numpy arrays, so the sampling loop can stay in numpy from step to step.

`make_stepper` picks one for the model's device and the number of streams.
"""

from __future__ import annotations

import numpy as np
import torch

from .model import CharRNN

def layer_weights(model: CharRNN, layer: int) -> tuple[torch.Tensor, ...]:
    """(w_ih, w_hh, b_ih, b_hh) of one layer, detached. An LSTM's gate rows are reordered from
    torch's i, f, g, o to i, f, o, g, so one contiguous slice holds the three sigmoid gates."""
    rnn = model.rnn
    weights = [getattr(rnn, f"{kind}_l{layer}").detach() for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
    if model.config.cell == "lstm":
        H = model.config.hidden_size
        order = torch.cat([torch.arange(0, 2 * H), torch.arange(3 * H, 4 * H), torch.arange(2 * H, 3 * H)])
        order = order.to(weights[0].device)
        weights = [w[order] for w in weights]
    return tuple(weights)


def input_table(model: CharRNN, w_ih: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """The first layer's input term depends only on the character: bias + W_ih e_c for every c, (V, gates)."""
    return torch.addmm(bias, model.embedding.weight.detach(), w_ih.t())


class Stepper:
    """The step on torch tensors, on any device. State: a list with one entry per layer, (h, c) for
    an LSTM, h otherwise, each (B, H)."""

    def __init__(self, model: CharRNN, logit_scale: float = 1.0):
        """`logit_scale` multiplies the logits for free (folded into the output layer): 1/temperature."""
        config = model.config
        # A one-row matrix product runs on one core in the CPU's BLAS; cut into one block of rows per
        # thread and run as a batched product, it uses every core (twice as fast on two, at any batch).
        on_cpu = model.head.weight.device.type == "cpu"
        self.blocks = max(torch.get_num_threads(), 1) if on_cpu else 1
        self.cell = config.cell
        self.hidden_size = config.hidden_size
        with torch.no_grad():
            self.layers = [self._arrange(model, layer, *layer_weights(model, layer))
                           for layer in range(config.num_layers)]
            self.head_w = (model.head.weight.detach() * logit_scale).contiguous()
            self.head_b = (model.head.bias.detach() * logit_scale).contiguous()

    def _arrange(self, model, layer, w_ih, w_hh, b_ih, b_hh) -> dict:
        # matrices stay (out, in), used transposed: for one stream the multiply is then a row-by-row
        # dot product, the fastest way to stream the weights through the cache
        if self.cell == "gru":  # r and z sum both halves; n needs W_hn h kept apart
            if layer == 0:
                return {"table": input_table(model, w_ih, b_ih).contiguous(),
                        "w_hh": w_hh.contiguous(), "b_hh": b_hh.contiguous()}
            return {"w_ih": w_ih.contiguous(), "b_ih": b_ih.contiguous(),
                    "w_hh": w_hh.contiguous(), "b_hh": b_hh.contiguous()}
        if layer == 0:
            return {"table": input_table(model, w_ih, b_ih + b_hh).contiguous(), "w_hh": w_hh.contiguous()}
        return {"bias": (b_ih + b_hh).contiguous(), "w_cat": torch.cat([w_ih, w_hh], dim=1).contiguous()}

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

    def select(self, state: list, rows: torch.Tensor) -> list:
        """The state of these streams, in this order (beam search: each beam continues its parent)."""
        return [tuple(t[rows] for t in s) if isinstance(s, tuple) else s[rows] for s in state]

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


class BlasStepper:
    """The step on numpy arrays, for a model on the CPU. Arrays are feature-major, (features, B):
    a product is then W @ x, one matrix-vector product for one stream. State: a list with one entry
    per layer, (h, c) for an LSTM, h otherwise, each (H, B)."""

    def __init__(self, model: CharRNN, logit_scale: float = 1.0):
        config = model.config
        self.cell = config.cell
        self.hidden_size = H = config.hidden_size
        with torch.no_grad():
            self.layers = []
            for layer in range(config.num_layers):
                w_ih, w_hh, b_ih, b_hh = layer_weights(model, layer)
                if self.cell != "rnn":
                    # sigmoid(x) = (tanh(x / 2) + 1) / 2: with the sigmoid gates' rows halved, one tanh
                    # covers every gate (numpy has no sigmoid; exp would overflow for large inputs)
                    sigmoid_rows = 3 * H if self.cell == "lstm" else 2 * H
                    scale = torch.ones(w_hh.shape[0])
                    scale[:sigmoid_rows] = 0.5
                    w_ih, w_hh = w_ih * scale[:, None], w_hh * scale[:, None]
                    b_ih, b_hh = b_ih * scale, b_hh * scale
                self.layers.append(self._arrange(model, layer, w_ih, w_hh, b_ih, b_hh))
            self.head_w = _array(model.head.weight.detach() * logit_scale)
            self.head_b = _array((model.head.bias.detach() * logit_scale)[:, None])
        self.cell_step = {"lstm": self._lstm, "gru": self._gru, "rnn": self._rnn}[self.cell]

    def _arrange(self, model, layer, w_ih, w_hh, b_ih, b_hh) -> dict:
        if self.cell == "gru":
            if layer == 0:
                return {"table": _array(input_table(model, w_ih, b_ih)), "w_hh": _array(w_hh),
                        "b_hh": _array(b_hh[:, None])}
            return {"w_ih": _array(w_ih), "b_ih": _array(b_ih[:, None]), "w_hh": _array(w_hh),
                    "b_hh": _array(b_hh[:, None])}
        if layer == 0:  # (V, gates): a character's row is its input term
            return {"table": _array(input_table(model, w_ih, b_ih + b_hh)), "w_hh": _array(w_hh)}
        return {"bias": _array((b_ih + b_hh)[:, None]), "w_cat": _array(torch.cat([w_ih, w_hh], dim=1))}

    def state_from_hidden(self, hidden) -> list:
        if self.cell == "lstm":
            h, c = hidden
            return [(_array(h[i].t()), _array(c[i].t())) for i in range(h.shape[0])]
        return [_array(hidden[i].t()) for i in range(hidden.shape[0])]

    def hidden_from_state(self, state: list):
        if self.cell == "lstm":
            return (torch.stack([torch.from_numpy(h.T.copy()) for h, _ in state]),
                    torch.stack([torch.from_numpy(c.T.copy()) for _, c in state]))
        return torch.stack([torch.from_numpy(h.T.copy()) for h in state])

    def select(self, state: list, rows: torch.Tensor) -> list:
        columns = rows.cpu().numpy()
        return [tuple(t[:, columns] for t in s) if isinstance(s, tuple) else s[:, columns] for s in state]

    def __call__(self, ids: torch.Tensor, state: list) -> tuple[torch.Tensor, list]:
        """ids (B,) -> logits (B, V) and the new state, as torch tensors like `Stepper`'s."""
        logits, state = self.step(ids.cpu().numpy(), state)
        return torch.from_numpy(np.ascontiguousarray(logits)), state

    def step(self, ids: np.ndarray, state: list) -> tuple[np.ndarray, list]:
        """The same on numpy arrays, ids (B,) -> logits (B, V): the sampling loop's fast path.
        Converting to and from torch costs more than a tenth of a small model's step."""
        x = None
        new_state = []
        for index, (params, layer_state) in enumerate(zip(self.layers, state)):
            x, layer_state = self.cell_step(params, ids if index == 0 else None, x, layer_state)
            new_state.append(layer_state)
        logits = self.head_w @ x
        logits += self.head_b
        return logits.T, new_state

    @staticmethod
    def _input(p: dict, columns: np.ndarray | None, x: np.ndarray | None, h: np.ndarray) -> np.ndarray:
        """The pre-activations of every gate: W_ih x + W_hh h + b, from one matrix product."""
        if columns is not None:
            gates = p["w_hh"] @ h
            gates += p["table"][columns].T
        else:
            gates = p["w_cat"] @ np.concatenate((x, h))
            gates += p["bias"]
        return gates

    def _lstm(self, p, columns, x, state):
        h, c = state
        H = self.hidden_size
        gates = self._input(p, columns, x, h)
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

    def _gru(self, p, columns, x, h):
        H = self.hidden_size
        gi = p["table"][columns].T if columns is not None else p["w_ih"] @ x + p["b_ih"]
        gh = p["w_hh"] @ h
        gh += p["b_hh"]
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

    def _rnn(self, p, columns, x, h):
        h = np.tanh(self._input(p, columns, x, h))
        return h, h


def _array(t: torch.Tensor) -> np.ndarray:
    """A contiguous float32 numpy copy of a CPU tensor."""
    return np.ascontiguousarray(t.detach().float().cpu().numpy())


def make_stepper(model: CharRNN, logit_scale: float = 1.0, streams: int = 1) -> Stepper | BlasStepper:
    """The faster stepper for the model's device and number of streams: numpy's for one stream on
    the CPU, torch's otherwise.

    Both numpy's BLAS (OpenBLAS) and torch (OpenMP) keep their worker threads spinning for a while
    after each parallel operation. When a step mixes the two, as it does whenever the sampling options
    run in torch (top-k, top-p, min-p, the repetition penalty), each pool waits out a scheduler time
    slice for the other's spinning threads on a 2-core machine: 9 ms a step for 16 streams, measured,
    against 2 ms with torch alone. One stream keeps every torch operation on the calling thread, so the
    clash never arises there. Plain sampling of several streams stays in numpy and does not clash, but
    is no faster either (1.05x torch's rate for 16 streams, 0.96x for 64: scripts/steppers.py).
    """
    if model.head.weight.device.type == "cpu" and streams == 1:
        return BlasStepper(model, logit_scale)
    return Stepper(model, logit_scale)
