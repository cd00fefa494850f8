"""One character at a time through a trained model on torch tensors: the inner loop of sampling on a GPU.

Stepping `nn.LSTM` on a length-1 input is slow (a heavyweight kernel set up for every call), so
`Stepper` runs the recurrence with the model's own matrices, pre-arranged for one matrix product
per layer and step. Its output equals the model's forward pass to floating-point rounding (a test
checks every cell type). `TorchSteps` puts it behind the numpy engine's interface, so that one sampler
(`charnn.generate`) draws from either: ids in and logits out as numpy arrays on the host.

On the CPU, sampling runs in numpy instead (`charnn.model.engine`, without PyTorch); `engine_from_model`
makes that engine from a model, and `BlasStepper` gives it `Stepper`'s interface (for tests).
"""

from __future__ import annotations

import numpy as np
import torch

from ..runtime.threads import ThreadChoice
from .engine import Engine
from .network import CharRNN, reset_streams


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

    def __init__(self, model: CharRNN):
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
            self.head_w = model.head.weight.detach().contiguous()
            self.head_b = model.head.bias.detach().contiguous()

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


class _TorchThreads:
    """Threads of the torch path: PyTorch's own (a GPU's kernels need none), so nothing to time or set; the
    engine's thread pool and policy in name only."""

    threads = None

    def __enter__(self) -> _TorchThreads:
        return self

    def __exit__(self, *exc) -> None:
        return None

    def set(self, threads) -> None:
        return None

    def limit(self, threads) -> None:
        return None

    def start(self) -> None:
        return None

    def finish(self, seconds: float, work: float = 1.0) -> None:
        return None


class TorchSteps:
    """PyTorch's `Stepper` behind the numpy engine's interface (`charnn.generate.streams.Steps`): ids in and
    logits out as numpy arrays on the host (B x V floats a step, a small copy: the ids drawn from them are
    needed there anyway), the state on the model's device; a prime is read by the model's forward pass. What
    samples on a GPU; on the CPU, the reference the tests hold the engine to."""

    PRIME_CHUNK = 1024  # prime steps per forward pass: bounds the logits kept for a long prime

    def __init__(self, model: CharRNN):
        self.model = model.eval()
        self.config, self.vocab_size = model.config, model.config.vocab_size
        self.torch_device = model.head.weight.device
        self.device = str(self.torch_device)
        self.stepper = Stepper(model)
        self.pool = _TorchThreads()

    def policy_for(self, streams: int) -> _TorchThreads:
        return self.pool

    def _tensor(self, array: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.ascontiguousarray(array), device=self.torch_device)

    def zero_state(self, streams: int) -> list:
        return self.stepper.state_from_hidden(self.model.init_hidden(streams, self.torch_device))

    @torch.inference_mode()
    def read(self, ids: np.ndarray, state: list, resets: np.ndarray | None = None) -> tuple[np.ndarray, list]:
        """ids (T, B) after `state`: the logits (B, V) of what follows the last one, and the state."""
        ids, resets = self._tensor(ids), None if resets is None else self._tensor(resets)
        hidden = self.stepper.hidden_from_state(state)
        for start in range(0, len(ids), self.PRIME_CHUNK):
            chunk = slice(start, start + self.PRIME_CHUNK)
            logits, hidden = self.model(ids[chunk], hidden, None if resets is None else resets[chunk])
        return _array(logits[-1]), self.stepper.state_from_hidden(hidden)

    @torch.inference_mode()
    def step(self, ids: np.ndarray, state: list) -> tuple[np.ndarray, list]:
        """ids (B,) -> the next character's logits (B, V) and the new state."""
        logits, state = self.stepper(self._tensor(ids), state)
        return _array(logits), state

    @torch.inference_mode()
    def select(self, state: list, rows: np.ndarray) -> list:
        return self.stepper.select(state, self._tensor(rows))

    @torch.inference_mode()
    def join(self, first: list, second: list) -> list:
        return [tuple(torch.cat(pair) for pair in zip(a, b)) if isinstance(a, tuple) else torch.cat((a, b))
                for a, b in zip(first, second)]

    @torch.inference_mode()
    def zero(self, state: list, mask: np.ndarray) -> list:
        if not mask.any():
            return state
        return self.stepper.state_from_hidden(reset_streams(self.stepper.hidden_from_state(state), self._tensor(mask)))


def engine_from_model(model: CharRNN, threads: ThreadChoice | None = None) -> Engine:
    """The numpy engine of a model's weights as they are now (copied: training may go on changing them)."""
    arrays = {name: tensor.detach().float().cpu().numpy().copy() for name, tensor in model.state_dict().items()}
    return Engine(model.config, arrays, threads)


class BlasStepper:
    """`Stepper`'s interface over the numpy engine (`charnn.model.engine`), which samples on the CPU: torch
    tensors in and out, the engine's feature-major numpy arrays, (H, B) per layer, as the state.
    Tests hold the engine to the model through it."""

    def __init__(self, model: CharRNN):
        self.engine = engine_from_model(model)

    def state_from_hidden(self, hidden) -> list:
        if isinstance(hidden, tuple):
            h, c = hidden
            return [(_array(h[i].t()), _array(c[i].t())) for i in range(h.shape[0])]
        return [_array(hidden[i].t()) for i in range(hidden.shape[0])]

    def hidden_from_state(self, state: list):
        if isinstance(state[0], tuple):
            return (torch.stack([torch.from_numpy(h.T.copy()) for h, _ in state]),
                    torch.stack([torch.from_numpy(c.T.copy()) for _, c in state]))
        return torch.stack([torch.from_numpy(h.T.copy()) for h in state])

    def select(self, state: list, rows: torch.Tensor) -> list:
        return self.engine.select(state, rows.cpu().numpy())

    def __call__(self, ids: torch.Tensor, state: list) -> tuple[torch.Tensor, list]:
        """ids (B,) -> logits (B, V) and the new state, like `Stepper`'s."""
        logits, state = self.engine.step(ids.cpu().numpy(), state)
        return torch.from_numpy(np.ascontiguousarray(logits)), state


def _array(t: torch.Tensor) -> np.ndarray:
    """A contiguous float32 numpy copy of a CPU tensor."""
    return np.ascontiguousarray(t.detach().float().cpu().numpy())
