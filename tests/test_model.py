import pytest
import torch
import torch.nn.functional as F

from charnn import BlasStepper, CharRNN, ModelConfig, Stepper, detach_hidden
from charnn.model.network import dropout, hidden_from_list, hidden_to_list
from charnn.model.spec import forward_flops_per_char, parameter_count, step_weight_bytes, weight_shapes

from conftest import tiny_model_config


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_shapes_time_major(cell):
    model = CharRNN(tiny_model_config(11, cell=cell, num_layers=2))
    logits, hidden = model(torch.randint(0, 11, (7, 3)))
    assert logits.shape == (7, 3, 11)
    h = hidden[0] if cell == "lstm" else hidden
    assert h.shape == (2, 3, 32)


def test_weight_tying_shares_the_matrix():
    model = CharRNN(tiny_model_config(11, embed_size=32, tie_weights=True))
    assert model.head.weight is model.embedding.weight


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("layers,tied", [(1, False), (3, False), (2, True)])
def test_the_spec_is_the_networks_weights_and_parameter_count(cell, layers, tied):
    """charnn.model.spec describes what PyTorch builds: every tensor by name and shape, and the parameters."""
    config = tiny_model_config(11, cell=cell, num_layers=layers, embed_size=32 if tied else 16, tie_weights=tied)
    model = CharRNN(config)
    assert weight_shapes(config) == {name: tuple(t.shape) for name, t in model.state_dict().items()}
    assert parameter_count(config) == sum(p.numel() for p in model.parameters())  # a tied matrix counted once


def test_the_specs_work_and_bytes():
    config = ModelConfig(vocab_size=65, num_layers=2, hidden_size=512)
    # 2x512 LSTM, 65 characters, trained at 5,500 chars/s: 139 GFLOP/s (forward, and twice that backward)
    assert abs(3 * forward_flops_per_char(config) * 5500 / 1e9 - 139) < 1
    # a sampling step reads layer 0's recurrent matrix, layer 1's input and recurrent matrices, the output layer
    assert step_weight_bytes(config) == 4 * (2048 * 512 + 2048 * 1024 + 512 * 65)
    assert step_weight_bytes(ModelConfig(vocab_size=65, cell="gru", num_layers=1, hidden_size=8)) == 4 * (24 * 8 + 8 * 65)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_carried_state_does_not_keep_the_previous_graph(cell):
    """Truncated BPTT: window 2 backpropagates into its own window only.

    If the carried state still referenced window 1's graph, backward through window 2
    would try to run through window 1's graph again, whose buffers were already freed.
    """
    model = CharRNN(tiny_model_config(11, cell=cell, num_layers=2))
    x1, x2 = torch.randint(0, 11, (2, 5, 4))
    logits, hidden = model(x1)
    logits.sum().backward()
    carried = detach_hidden(hidden)
    for h in carried if isinstance(carried, tuple) else (carried,):
        assert h.grad_fn is None and not h.requires_grad
    logits2, _ = model(x2, carried)
    logits2.sum().backward()  # raises if the graph of window 1 were still attached

    # ... while not detaching really would reach back into window 1:
    model.zero_grad()
    logits, hidden = model(x1)
    logits.sum().backward()
    logits2, _ = model(x2, hidden)
    with pytest.raises(RuntimeError):
        logits2.sum().backward()


@pytest.mark.parametrize("stepper_class", [Stepper, BlasStepper])
@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("layers", [1, 3])
@pytest.mark.parametrize("streams", [1, 5, 300])  # 300 x 32 units: torch's tanh in BlasStepper
def test_stepper_matches_the_model(stepper_class, cell, layers, streams):
    torch.manual_seed(1)
    model = CharRNN(tiny_model_config(13, cell=cell, num_layers=layers, embed_size=8)).eval()
    ids = torch.randint(0, 13, (12, streams))
    with torch.no_grad():
        warm_up = torch.randint(0, 13, (4, streams))  # start from a state that is not zero
        _, start = model(warm_up)
        want, want_hidden = model(ids, start)
        stepper = stepper_class(model)
        state = stepper.state_from_hidden(start)
        got = []
        for t in range(12):
            logits, state = stepper(ids[t], state)
            got.append(logits)
    torch.testing.assert_close(torch.stack(got), want, atol=1e-5, rtol=1e-5)
    got_hidden = stepper.hidden_from_state(state)
    for a, b in zip(got_hidden if cell == "lstm" else [got_hidden], want_hidden if cell == "lstm" else [want_hidden]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("stepper_class", [Stepper, BlasStepper])
def test_stepper_select_reorders_streams(stepper_class):
    torch.manual_seed(2)
    model = CharRNN(tiny_model_config(11, num_layers=2, embed_size=8)).eval()
    with torch.no_grad():
        _, hidden = model(torch.randint(0, 11, (6, 3)))
        stepper = stepper_class(model)
        rows = torch.tensor([2, 0, 0])
        picked = stepper.hidden_from_state(stepper.select(stepper.state_from_hidden(hidden), rows))
    for got, want in zip(picked, hidden):
        torch.testing.assert_close(got, want[:, rows])


def test_hidden_list_round_trip():
    model = CharRNN(tiny_model_config(5))
    _, hidden = model(torch.zeros(3, 2, dtype=torch.long))
    back = hidden_from_list(hidden_to_list(hidden), "lstm", "cpu")
    assert all(torch.equal(a, b) for a, b in zip(hidden, back))
    assert hidden_from_list([], "lstm", "cpu") is None


def test_loss_is_cross_entropy_on_shifted_targets():
    model = CharRNN(tiny_model_config(7))
    ids = torch.randint(0, 7, (9, 2))
    logits, _ = model(ids[:-1])
    loss = F.cross_entropy(logits.reshape(-1, 7), ids[1:].reshape(-1))
    assert 1.0 < loss.item() < 3.0  # about ln(7) = 1.95 at initialisation


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_layer_by_layer_recurrence_equals_the_stacked_module(cell):
    """Training on the CPU with dropout runs the layers one call at a time: same function as nn.LSTM/GRU/RNN."""
    torch.manual_seed(0)
    model = CharRNN(ModelConfig(vocab_size=11, cell=cell, num_layers=3, hidden_size=24, embed_size=8, dropout=0.0))
    x = torch.randn(13, 5, 8, requires_grad=True)
    hidden = model.init_hidden(5)
    hidden = tuple(h + 0.3 for h in hidden) if cell == "lstm" else hidden + 0.3
    expected, expected_hidden = model.rnn(x, hidden)
    out, out_hidden = model._layer_by_layer(x, hidden)
    torch.testing.assert_close(out, expected)
    for a, b in zip(out_hidden if cell == "lstm" else [out_hidden], expected_hidden if cell == "lstm" else [expected_hidden]):
        torch.testing.assert_close(a, b)
    grad = torch.autograd.grad(out.sum(), x)[0]
    torch.testing.assert_close(grad, torch.autograd.grad(model.rnn(x, hidden)[0].sum(), x)[0])


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_cpu_dropout_drops_the_right_share_and_keeps_the_mean(p):
    torch.manual_seed(0)
    x = torch.ones(200_000)
    y = dropout(x, p, training=True)
    dropped = (y == 0).float().mean().item()
    assert abs(dropped - p) < 0.005
    assert abs(y.mean().item() - 1.0) < 0.01
    assert torch.equal(dropout(x, p, training=False), x)
    torch.manual_seed(1)
    a = dropout(x, p, True)
    torch.manual_seed(1)
    assert torch.equal(a, dropout(x, p, True))  # seeded: runs and resumes repeat exactly
