"""Export of every rnnattn module: both ONNX exporters and torch.export.

Each bundle of modules is exported once with dynamic batch and time, then run
by onnxruntime on inputs of two sizes (neither the example's) and compared
with the eager modules (the fused kernels) in float32. The ONNX graph of a
recurrence must hold ONNX's own RNN / GRU / LSTM operator, one node per layer
(not an unrolled or looped step); cells and the pooling become standard
operators. torch.export's programs are run against the eager modules too.
"""
import collections
import importlib.util
import inspect
import warnings

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import rnnattn

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

ATOL = 1e-5
EXAMPLE = (3, 5)  # (B, T) of the export example
SIZES = [(2, 8), (4, 3)]  # (B, T) fed to the exported model: T of both parities (chunks of 2)

# The modules know they are being exported by torch.compiler.is_exporting (torch 2.5);
# the dynamo ONNX exporter (which needs onnxscript) gets the recurrences as ONNX
# operators through torch.onnx.ops (torch 2.8).
HAS_EXPORT = hasattr(torch.compiler, "is_exporting")
HAS_DYNAMO_ONNX = (
    HAS_EXPORT
    and hasattr(torch.onnx, "ops")
    and "dynamo" in inspect.signature(torch.onnx.export).parameters
    and importlib.util.find_spec("onnxscript") is not None
)
EXPORTERS = [
    pytest.param(False, id="torchscript"),
    pytest.param(
        True, id="dynamo", marks=pytest.mark.skipif(not HAS_DYNAMO_ONNX, reason="needs torch >= 2.8 and onnxscript")
    ),
]
needs_export = pytest.mark.skipif(not HAS_EXPORT, reason="exporting the modules needs torch >= 2.5")


# ---- cases ---------------------------------------------------------------------------------------
#
# Each case is a bundle of modules called on the same inputs and exported as one model: a dynamo
# export takes seconds, so one export per bundle keeps this file's time down. A case gives the
# inputs of a given (B, T), their dynamic dims, and how many ONNX RNN / GRU / LSTM nodes the graph
# must hold (one per layer: both directions of a layer are one node).


class Bundle(torch.nn.Module):
    def __init__(self, **parts):  # name -> (module, call(module, *inputs))
        super().__init__()
        self.parts = torch.nn.ModuleDict({name: m for name, (m, _) in parts.items()})
        self.calls = [call for _, call in parts.values()]

    def forward(self, x, lengths=None, mask=None):  # (named arguments, not *inputs: torch.export's dynamic_shapes)
        inputs = [t for t in (x, lengths, mask) if t is not None]
        return tuple(call(m, *inputs) for m, call in zip(self.parts.values(), self.calls))


def _seq(B, T, g):
    return (torch.randn(B, T, 4, generator=g),)


def _seq_lengths(B, T, g):
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    lengths[0] = T  # the longest; the others may all be shorter than T
    return torch.randn(B, T, 4, generator=g), lengths


def _seq_lengths_mask(B, T, g):
    x, lengths = _seq_lengths(B, T, g)
    mask = torch.rand(B, T, generator=g) < 0.7
    mask[:, 0] = True
    return x, lengths, mask


def _recurrences_and_cells():
    return Bundle(
        rnn=(rnnattn.RNN(4, 6, batch_first=True), lambda m, x: m(x)),
        rnn_relu_2layer_bi_time_major=(
            rnnattn.RNN(4, 6, 2, nonlinearity="relu", bidirectional=True), lambda m, x: m(x.transpose(0, 1))
        ),
        gru_2layer_bi=(rnnattn.GRU(4, 6, 2, batch_first=True, bidirectional=True), lambda m, x: m(x)),
        lstm_2layer_bi=(rnnattn.LSTM(4, 6, 2, batch_first=True, bidirectional=True), lambda m, x: m(x)),
        lstm_proj_2layer_bi=(
            rnnattn.LSTM(4, 6, 2, batch_first=True, bidirectional=True, proj_size=3), lambda m, x: m(x)
        ),
        # h_0 enters the projected LSTM another way than zeros do (rnnattn._export._lstm_projected)
        lstm_proj_bi_given_states=(
            rnnattn.LSTM(4, 4, batch_first=True, bidirectional=True, proj_size=3),
            lambda m, x: m(x, (x[:, :2, :3].transpose(0, 1), x[:, -2:].transpose(0, 1))),
        ),
        # the cells, on the first step (one step: standard operators, no recurrence node)
        rnn_cell=(rnnattn.RNNCell(4, 6), lambda m, x: m(x[:, 0])),
        rnn_cell_relu_h0=(rnnattn.RNNCell(4, 4, nonlinearity="relu"), lambda m, x: m(x[:, 0], x[:, 1])),
        gru_cell=(rnnattn.GRUCell(4, 6), lambda m, x: m(x[:, 0])),
        lstm_cell=(rnnattn.LSTMCell(4, 6), lambda m, x: m(x[:, 0])),
    )


def _pooling():
    P = rnnattn.AttentionPooling
    return Bundle(
        lengths=(P(4), lambda m, x, n, mask: m(x, n)),
        heads2=(P(4, heads=2), lambda m, x, n, mask: m(x, n)),
        additive=(P(4, score="additive", attn_size=5), lambda m, x, n, mask: m(x, n)),
        chunks=(P(4, heads=2, chunk_size=2), lambda m, x, n, mask: m(x, n)),
        mask=(P(4, heads=2), lambda m, x, n, mask: m(x, mask=mask)),
        additive_chunks_mask_lengths=(
            P(4, score="additive", chunk_size=3), lambda m, x, n, mask: m(x, n, mask)
        ),
    )


def _classifiers():
    C = rnnattn.RNNAttentionClassifier
    return Bundle(
        rnn_2layer_bi=(C(3, 4, 6, num_layers=2, bidirectional=True), lambda m, x, n: m(x, n)),
        gru_bi_heads2=(C(3, 4, 6, cell="gru", bidirectional=True, heads=2), lambda m, x, n: m(x, n)),
        lstm_bi_chunks=(C(3, 4, 6, cell="lstm", bidirectional=True, chunk_size=2), lambda m, x, n: m(x, n)),
        gru_2layer_bi_equal_length=(
            C(3, 4, 6, cell="gru", num_layers=2, bidirectional=True), lambda m, x, n: m(x)
        ),
        # token ids (made from x), time-major
        lstm_tokens_time_major=(
            C(3, vocab_size=20, embedding_dim=5, padding_idx=0, hidden_size=6, cell="lstm", batch_first=False),
            lambda m, x, n: m((x[..., 0].abs() * 5).long().clamp(max=19).T, n),
        ),
    )


BT, B_ = {0: "B", 1: "T"}, {0: "B"}
CASES = {  # name: (bundle, inputs, dynamic dims per input, {ONNX op: nodes})
    "recurrences-and-cells": (_recurrences_and_cells, _seq, (BT,), {"RNN": 3, "GRU": 2, "LSTM": 5}),
    "pooling": (_pooling, _seq_lengths_mask, (BT, B_, BT), {}),
    "classifier": (_classifiers, _seq_lengths, (BT, B_), {"RNN": 2, "GRU": 3, "LSTM": 2}),
}


def _flat(out):
    if isinstance(out, torch.Tensor):
        return [out]
    return [t for o in out for t in _flat(o)]


def _labelled(model, outputs):
    """(label, tensor) for each flattened output of a Bundle."""
    return [(f"{name} output {i}", t) for name, o in zip(model.parts, outputs) for i, t in enumerate(_flat(o))]


def _export(model, args, dims, dynamo, path, optimize=True):
    assert len(dims) == len(args)
    names = [f"in{i}" for i in range(len(args))]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript exporter's deprecation and tracer warnings
        if dynamo:
            shared = {}
            shapes = tuple(
                {ax: shared.setdefault(n, torch.export.Dim(n, min=2)) for ax, n in d.items()} for d in dims
            )
            torch.onnx.export(
                model, args, path, dynamo=True, dynamic_shapes=shapes, input_names=names, verbose=False,
                optimize=optimize,
            )
        else:
            axes = {name: dict(d) for name, d in zip(names, dims)}
            torch.onnx.export(model, args, path, dynamo=False, input_names=names, dynamic_axes=axes)
    return names


@pytest.mark.parametrize("dynamo", EXPORTERS)
@pytest.mark.parametrize("case", list(CASES))
def test_onnx_roundtrip(case, dynamo, tmp_path):
    make_model, make_inputs, dims, recurrent_nodes = CASES[case]
    torch.manual_seed(0)
    model = make_model().eval()
    g = torch.Generator().manual_seed(1)
    path = str(tmp_path / "model.onnx")
    # onnxscript's graph optimizer (on by default) takes a quarter of a dynamo export's time: it runs
    # on the recurrences, whose weight reordering it folds, and is left out elsewhere.
    names = _export(model, make_inputs(*EXAMPLE, g), dims, dynamo, path, optimize=case.startswith("recurrences"))

    ops = collections.Counter(node.op_type for node in onnx.load(path).graph.node)
    got_nodes = {op: ops[op] for op in ("RNN", "GRU", "LSTM") if ops[op]}
    assert got_nodes == recurrent_nodes, f"{case}: ONNX recurrence nodes {got_nodes}, want {recurrent_nodes}"
    assert not {"Loop", "Scan"} & set(ops), f"{case}: a step loop in the ONNX graph: {sorted(ops)}"
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    for B, T in SIZES:
        inputs = make_inputs(B, T, g)
        with torch.no_grad():
            want = _labelled(model, model(*inputs))
        got = session.run(None, {n: x.numpy() for n, x in zip(names, inputs)})
        assert len(got) == len(want)
        for o, (label, w) in zip(got, want):
            assert o.shape == tuple(w.shape), f"{case}, {label} at (B, T) = {(B, T)}"
            diff = (torch.from_numpy(o) - w).abs().max().item()
            assert diff <= ATOL, f"{case}, {label} at (B, T) = {(B, T)}: max abs diff {diff}"


# ---- torch.export ----------------------------------------------------------------------------------


@needs_export
def test_torch_export_classifier_padded_lengths():
    """Padded input + lengths exports with dynamic B and T: no packing in the
    graph, the recurrence as one export op per layer; the exported program
    matches the eager (packed, fused) models."""
    torch.manual_seed(0)
    model = _classifiers().eval()
    g = torch.Generator().manual_seed(1)
    # T > chunk_size: torch.export specialises sizes of 1, here the chunk count (README, "Export")
    B, T = torch.export.Dim("B", min=2), torch.export.Dim("T", min=3)
    ep = torch.export.export(model, _seq_lengths(*EXAMPLE, g), dynamic_shapes=({0: B, 1: T}, {0: B}))
    ops = collections.Counter(str(n.target) for n in ep.graph.nodes if n.op == "call_function")
    assert not [op for op in ops if "pack" in op], sorted(ops)
    # one op per layer: rnn 2 + gru 1 + gru 2 layers; lstm 1 + 1
    assert ops["rnnattn.export_rnn_layer.default"] == 5 and ops["rnnattn.export_lstm_layer.default"] == 2, ops
    for size in SIZES:
        x, lengths = _seq_lengths(*size, g)
        with torch.no_grad():
            want = _labelled(model, model(x, lengths))
        for o, (label, w) in zip(_flat(ep.module()(x, lengths)), want):
            torch.testing.assert_close(o, w, rtol=0, atol=ATOL, msg=lambda m: f"{label} at (B, T) = {size}: {m}")


@needs_export
@pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN")  # torch's own
def test_torch_export_rnn_with_h0_unbatched_and_lstm_proj():
    """The module path under export takes h_0, unbatched input and proj_size as torch's modules do."""
    torch.manual_seed(0)
    lstm = rnnattn.LSTM(4, 6, 2, bidirectional=True, proj_size=3).eval()
    x, h0, c0 = torch.randn(5, 2, 4), torch.randn(4, 2, 3), torch.randn(4, 2, 6)
    ep = torch.export.export(lstm, (x, (h0, c0)))
    for o, w in zip(_flat(ep.module()(x, (h0, c0))), _flat(lstm(x, (h0, c0)))):
        torch.testing.assert_close(o, w, rtol=0, atol=ATOL)
    gru = rnnattn.GRU(4, 6, batch_first=True).eval()
    x, h0 = torch.randn(5, 4), torch.randn(1, 6)
    ep = torch.export.export(gru, (x, h0))
    for o, w in zip(_flat(ep.module()(x, h0)), _flat(gru(x, h0))):
        torch.testing.assert_close(o, w, rtol=0, atol=ATOL)


@pytest.mark.parametrize("how", ["torch.export", "torchscript"])
def test_packed_sequence_input_error_is_clear(how, tmp_path):
    """A PackedSequence input cannot be exported (its batch_sizes are data;
    torch.jit.trace passes it on as a plain tuple): the error says so, naming
    the module and what to export instead."""
    if how == "torch.export" and not HAS_EXPORT:
        pytest.skip("needs torch >= 2.5")
    x = pack_padded_sequence(torch.randn(3, 5, 4), torch.tensor([5, 3, 2]), batch_first=True)
    for model in (rnnattn.GRU(4, 6, batch_first=True), rnnattn.RNNAttentionClassifier(3, 4, 6)):
        name = "rnnattn.GRU" if isinstance(model, rnnattn.GRU) else "RNNAttentionClassifier"
        with pytest.raises(Exception, match=f"{name}: .*PackedSequence input cannot be exported"):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if how == "torch.export":
                    torch.export.export(model.eval(), (x,))
                else:
                    torch.onnx.export(model.eval(), (x,), str(tmp_path / "m.onnx"), dynamo=False)
