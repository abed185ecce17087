"""Bad arguments to the public API get an error that names the argument (and
the expected type, count or shape), never silent acceptance, a pybind
overload dump or an index error from deep inside: the functional stacks,
the modules' and cells' states, the cell and layer operators' weights and
dtypes, and the pooling's parameters and chunk size. (The modules' errors
that torch's own module_db samples cover are in test_drop_in_modules.py.)"""
import pytest
import torch
from torch import nn

import rnnattn
from rnnattn import functional, ops
from rnnattn.attention import attention_pooling

T, B, I, H = 4, 2, 3, 5


def _weights(gates, layers=1, directions=1, bias=True):
    w = []
    for layer in range(layers * directions):
        width = I if layer < directions else directions * H
        w += [torch.randn(gates * H, width), torch.randn(gates * H, H)]
        if bias:
            w += [torch.randn(gates * H), torch.randn(gates * H)]
    return w


STACKS = {
    "rnn": lambda hx, w, layers, bias=True, bidir=False: functional.rnn(
        torch.randn(T, B, I), None, hx, w, layers, bias, bidir),
    "gru": lambda hx, w, layers, bias=True, bidir=False: functional.gru(
        torch.randn(T, B, I), None, hx, w, layers, bias, bidir),
    "lstm": lambda hx, w, layers, bias=True, bidir=False: functional.lstm(
        torch.randn(T, B, I), None, (hx, hx.clone()), w, layers, bias, bidir),
}
GATES = {"rnn": 1, "gru": 3, "lstm": 4}


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_functional_stacks_check_their_counts(cell):
    run, g = STACKS[cell], GATES[cell]
    out, _ = run(torch.zeros(2, B, H), _weights(g, layers=2), 2)  # well formed
    assert out.shape == (T, B, H)
    name = f"rnnattn.functional.{cell}"
    with pytest.raises(ValueError, match=f"{name}: expected 8 weights .* got 4"):
        run(torch.zeros(2, B, H), _weights(g), 2)  # a layer's weights missing
    with pytest.raises(ValueError, match=f"{name}: expected 4 weights .* got 12"):
        run(torch.zeros(1, B, H), _weights(g) * 3, 1)  # too many: were ignored
    with pytest.raises(ValueError, match=f"{name}: expected 4 weights .* got 2"):
        run(torch.zeros(1, B, H), _weights(g, bias=False), 1)  # bias=True without biases
    with pytest.raises(ValueError, match=r"must be \(num_layers \* num_directions, B, H\) = \(1, B, H\), got \(3, 2, 5\)"):
        run(torch.zeros(3, B, H), _weights(g), 1)  # extra layers of state: were ignored
    with pytest.raises(ValueError, match=r"= \(2, B, H\), got \(1, 2, 5\)"):
        run(torch.zeros(1, B, H), _weights(g, directions=2), 1, True, True)  # one direction's state
    with pytest.raises(ValueError, match=f"{name}: num_layers must be a positive int, got 0"):
        run(torch.zeros(1, B, H), _weights(g), 0)


def test_functional_lstm_state_is_a_pair():
    with pytest.raises(TypeError, match=r"hx must be a pair \(h_0, c_0\)"):
        functional.lstm(torch.randn(T, B, I), None, torch.zeros(1, B, H), _weights(4), 1, True, False)
    with pytest.raises(ValueError, match=r"hx\[1\] must be \(num_layers"):
        functional.lstm(torch.randn(T, B, I), None, (torch.zeros(1, B, H), torch.zeros(B, H)),
                        _weights(4), 1, True, False)


@pytest.mark.parametrize("packed", [False, True])
def test_lstm_state_must_be_two_tensors(packed):
    """torch's LSTM raises for a state of three tensors (rnnattn.LSTM used to
    drop the third) and for a lone tensor (rnnattn.LSTM used to split it)."""
    m = rnnattn.LSTM(I, H)
    x = torch.randn(T, B, I)
    if packed:
        x = nn.utils.rnn.pack_padded_sequence(x, [T, T - 1])
    h = torch.zeros(1, B, H)
    out, (h_n, c_n) = m(x, [h, h])  # a list works, as in torch
    assert h_n.shape == c_n.shape == (1, B, H)
    with pytest.raises(RuntimeError, match="lstm expects two hidden states"):
        m(x, (h, h, h))
    with pytest.raises(TypeError, match=r"rnnattn.LSTM: hx must be a tuple \(h_0, c_0\) of tensors, got Tensor"):
        m(x, torch.zeros(2, 1, B, H))


@pytest.mark.parametrize("cls", [rnnattn.RNNCell, rnnattn.GRUCell, rnnattn.LSTMCell])
def test_cells_name_the_argument_of_the_wrong_type(cls):
    m = cls(I, H)
    x, h = torch.randn(B, I), torch.zeros(B, H)
    name = f"rnnattn.{cls.__name__}"
    with pytest.raises(TypeError, match=f"{name}: input must be a Tensor, got list"):
        m(x.tolist())
    if cls is rnnattn.LSTMCell:
        assert m(x, [h, h])[0].shape == (B, H)
        with pytest.raises(TypeError, match=rf"{name}: hx must be a tuple \(h_0, c_0\) of tensors or None, got Tensor"):
            m(x, h)
        with pytest.raises(TypeError, match=r"hx must be a tuple .* got tuple"):
            m(x, (h, 0))
    else:
        with pytest.raises(TypeError, match=f"{name}: hx must be a Tensor or None, got tuple"):
            m(x, (h,))


@pytest.mark.parametrize("cls", [rnnattn.GRUCell, rnnattn.LSTMCell])
def test_cell_dtype_error_names_the_cell(cls):
    m = cls(I, H)
    with pytest.raises(RuntimeError, match=f"^{cls.__name__} input dtype"):
        m(torch.randn(B, I, dtype=torch.float64))


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_cell_ops_check_the_weights_rank(cell):
    g = GATES[cell]
    w_ih, w_hh = torch.randn(g * H, I), torch.randn(g * H, H)
    hx = [torch.zeros(B, H)] * 2 if cell == "lstm" else torch.zeros(B, H)
    extra = (False,) if cell == "rnn" else ()
    op = getattr(torch.ops.rnnattn, f"{cell}_cell")
    with pytest.raises(ValueError, match="weight_ih and weight_hh must be 2-D .* got 2-D and 1-D"):
        op(torch.randn(B, I), hx, w_ih, w_hh.flatten(), None, None, *extra)


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_layer_ops_refuse_integer_input(cell):
    g = GATES[cell]
    args = dict(hx=torch.zeros(B, H, dtype=torch.long), w_ih=torch.ones(g * H, I, dtype=torch.long),
                w_hh=torch.ones(g * H, H, dtype=torch.long))
    x = torch.ones(T, B, I, dtype=torch.long)
    with pytest.raises(RuntimeError, match="rnnattn: input must be floating point .* got Long"):
        if cell == "lstm":
            ops.lstm_layer(x, None, args["hx"], args["hx"], args["w_ih"], args["w_hh"], None, None)
        else:
            getattr(ops, f"{cell}_layer")(x, None, args["hx"], args["w_ih"], args["w_hh"], None, None)


def test_rnn_refuses_proj_size_as_torch_does():
    with pytest.raises(ValueError, match="proj_size argument is only supported for LSTM"):
        rnnattn.RNN(I, H, proj_size=2)
    with pytest.raises(TypeError, match="unexpected keyword argument 'nope'"):
        rnnattn.RNN(I, H, nope=1)


def test_rnn_nonlinearity_is_its_mode_as_in_torch():
    """torch's forward reads the mode fixed at construction; setting the
    attribute afterwards changes neither."""
    torch.manual_seed(0)
    ours, theirs = rnnattn.RNN(I, H).double(), nn.RNN(I, H).double()
    theirs.load_state_dict(ours.state_dict())
    for m in (ours, theirs):
        m.nonlinearity = "relu"
    x = torch.randn(T, B, I, dtype=torch.float64)
    torch.testing.assert_close(ours(x)[0], theirs(x)[0])


def test_pooling_parameters_must_be_tensors():
    x = torch.randn(B, T, H)
    with pytest.raises(TypeError, match=r"AttentionPooling: bias must be a \(heads,\) tensor or None, got float"):
        attention_pooling(x, torch.randn(1, H), 0.5)
    with pytest.raises(TypeError, match=r"AttentionPooling: weight must be a \(heads, D\) tensor, got list"):
        attention_pooling(x, [1.0] * H)


@pytest.mark.parametrize("chunk", [T + 1, 2**62, 2**63 - 1])
def test_pooling_chunk_longer_than_the_sequence_is_one_chunk(chunk):
    """(T + chunk - 1) / chunk overflowed near 2^63 (a negative chunk count)."""
    torch.manual_seed(0)
    x, w = torch.randn(B, T, H, dtype=torch.float64), torch.randn(1, H, dtype=torch.float64)
    context, weights = attention_pooling(x, w)
    chunks, chunk_weights = attention_pooling(x, w, chunk_size=chunk)
    assert chunks.shape == (B, 1, H)  # one chunk's context per sequence
    torch.testing.assert_close(chunks[:, 0], context)
    torch.testing.assert_close(chunk_weights, weights)
