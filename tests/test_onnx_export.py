"""Export of every rnnattn module: both ONNX exporters and torch.export.

Each model is exported once with dynamic batch and time, then run by
onnxruntime on inputs of two sizes (neither the example's) and compared with
the eager module (the fused kernels) in float32. The ONNX graph of a
recurrence must hold ONNX's own RNN / GRU / LSTM operator (not an unrolled or
looped step); cells and the pooling become standard operators.
"""
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
SIZES = [(2, 7), (4, 3)]  # (B, T) fed to the exported model

# The dynamo exporter (torch.onnx.export(dynamo=True)) arrived in torch 2.5, as
# did torch.compiler.is_exporting, by which the modules know they are exported.
HAS_DYNAMO = "dynamo" in inspect.signature(torch.onnx.export).parameters and hasattr(
    torch.compiler, "is_exporting"
)
EXPORTERS = [
    pytest.param(False, id="torchscript"),
    pytest.param(True, id="dynamo", marks=pytest.mark.skipif(not HAS_DYNAMO, reason="needs torch >= 2.5")),
]
needs_export = pytest.mark.skipif(not HAS_DYNAMO, reason="exporting the modules needs torch >= 2.5")


# ---- cases: (model, inputs of a given (B, T), dynamic dims per input, op types that must appear) ----------

def _seq(I=4):
    return lambda B, T, g: (torch.randn(B, T, I, generator=g),)


def _seq_lengths(I=4):
    def make(B, T, g):
        lengths = torch.randint(1, T + 1, (B,), generator=g)
        lengths[0] = T  # the longest; not every batch has one of length T
        return torch.randn(B, T, I, generator=g), lengths
    return make


def _step(I=4):
    return lambda B, T, g: (torch.randn(B, I, generator=g),)


BT = ({0: "B", 1: "T"},)
BT_B = ({0: "B", 1: "T"}, {0: "B"})
CASES = {
    "rnn": (lambda: rnnattn.RNN(4, 6, batch_first=True), _seq(), BT, {"RNN"}),
    "rnn-relu-2layer-bi-timemajor": (
        lambda: rnnattn.RNN(4, 6, 2, nonlinearity="relu", bidirectional=True), _seq(), ({0: "T", 1: "B"},), {"RNN"}
    ),
    "gru-2layer-bi": (lambda: rnnattn.GRU(4, 6, 2, batch_first=True, bidirectional=True), _seq(), BT, {"GRU"}),
    "lstm-2layer-bi": (lambda: rnnattn.LSTM(4, 6, 2, batch_first=True, bidirectional=True), _seq(), BT, {"LSTM"}),
    "lstm-proj-2layer-bi": (
        lambda: rnnattn.LSTM(4, 6, 2, batch_first=True, bidirectional=True, proj_size=3), _seq(), BT, {"LSTM"}
    ),
    "rnn-cell": (lambda: rnnattn.RNNCell(4, 6), _step(), ({0: "B"},), {"Gemm"}),
    "gru-cell": (lambda: rnnattn.GRUCell(4, 6), _step(), ({0: "B"},), set()),
    "lstm-cell": (lambda: rnnattn.LSTMCell(4, 6), _step(), ({0: "B"},), set()),
    "pool-lengths": (lambda: rnnattn.AttentionPooling(4), _seq_lengths(), BT_B, {"Softmax"}),
    "pool-heads2": (lambda: rnnattn.AttentionPooling(4, heads=2), _seq_lengths(), BT_B, {"Softmax"}),
    "pool-additive": (lambda: rnnattn.AttentionPooling(4, score="additive", attn_size=5), _seq_lengths(), BT_B, {"Tanh"}),
    "pool-chunks": (lambda: rnnattn.AttentionPooling(4, heads=2, chunk_size=2), _seq_lengths(), BT_B, {"Softmax"}),
    "clf-rnn": (
        lambda: rnnattn.RNNAttentionClassifier(3, 4, 6, num_layers=2, bidirectional=True), _seq_lengths(), BT_B, {"RNN"}
    ),
    "clf-gru": (
        lambda: rnnattn.RNNAttentionClassifier(3, 4, 6, cell="gru", bidirectional=True, heads=2),
        _seq_lengths(), BT_B, {"GRU"},
    ),
    "clf-lstm-chunks": (
        lambda: rnnattn.RNNAttentionClassifier(3, 4, 6, cell="lstm", bidirectional=True, chunk_size=2),
        _seq_lengths(), BT_B, {"LSTM"},
    ),
    "clf-equal-length": (
        lambda: rnnattn.RNNAttentionClassifier(3, 4, 6, cell="gru", num_layers=2, bidirectional=True), _seq(), BT, {"GRU"}
    ),
}


class _Masked(torch.nn.Module):
    """AttentionPooling with a mask (a tensor input beside the states)."""

    def __init__(self):
        super().__init__()
        self.pool = rnnattn.AttentionPooling(4, heads=2)

    def forward(self, x, mask):
        return self.pool(x, mask=mask)


def _seq_mask(B, T, g):
    mask = torch.rand(B, T, generator=g) < 0.7
    mask[:, 0] = True
    return torch.randn(B, T, 4, generator=g), mask


CASES["pool-mask"] = (_Masked, _seq_mask, BT + BT, {"Softmax"})


def _flat(out):
    if isinstance(out, torch.Tensor):
        return [out]
    return [t for o in out for t in _flat(o)]


def _export(model, args, dims, dynamo, path):
    assert len(dims) == len(args)
    names = [f"in{i}" for i in range(len(args))]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript exporter's deprecation and tracer warnings
        if dynamo:
            shared = {}
            shapes = tuple(
                {ax: shared.setdefault(n, torch.export.Dim(n, min=2)) for ax, n in d.items()} for d in dims
            )
            torch.onnx.export(model, args, path, dynamo=True, dynamic_shapes=shapes, input_names=names, verbose=False)
        else:
            axes = {name: dict(d) for name, d in zip(names, dims)}
            torch.onnx.export(model, args, path, dynamo=False, input_names=names, dynamic_axes=axes)
    return names


@pytest.mark.parametrize("dynamo", EXPORTERS)
@pytest.mark.parametrize("case", sorted(CASES))
def test_onnx_roundtrip(case, dynamo, tmp_path):
    make_model, make_inputs, dims, must_have = CASES[case]
    torch.manual_seed(0)
    model = make_model().eval()
    g = torch.Generator().manual_seed(1)
    path = str(tmp_path / "model.onnx")
    names = _export(model, make_inputs(*EXAMPLE, g), dims, dynamo, path)

    ops = {node.op_type for node in onnx.load(path).graph.node}
    assert must_have <= ops, f"{case}: want {must_have} among the ONNX ops, got {sorted(ops)}"
    assert not ops & {"Loop", "Scan"}, f"{case}: a step loop in the ONNX graph: {sorted(ops)}"
    if case.startswith(("rnn-", "gru-", "lstm-")) and case.endswith("-cell"):
        assert not ops & {"RNN", "GRU", "LSTM"}
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    for B, T in SIZES:
        inputs = make_inputs(B, T, g)
        with torch.no_grad():
            want = _flat(model(*inputs))
        got = session.run(None, {n: x.numpy() for n, x in zip(names, inputs)})
        assert len(got) == len(want)
        for i, (o, w) in enumerate(zip(got, want)):
            assert o.shape == tuple(w.shape), f"{case} output {i} at (B, T) = {(B, T)}"
            diff = (torch.from_numpy(o) - w).abs().max().item()
            assert diff <= ATOL, f"{case} output {i} at (B, T) = {(B, T)}: max abs diff {diff}"


# ---- torch.export ----------------------------------------------------------------------------------


@needs_export
@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_torch_export_classifier_padded_lengths(cell):
    """Padded input + lengths exports with dynamic B and T: no packing in the
    graph, the recurrence as one export op per layer; the exported program
    matches the eager (packed, fused) model."""
    torch.manual_seed(0)
    model = rnnattn.RNNAttentionClassifier(3, 4, 6, cell=cell, num_layers=2, bidirectional=True, heads=2).eval()
    g = torch.Generator().manual_seed(1)
    B, T = torch.export.Dim("B", min=2), torch.export.Dim("T", min=2)
    ep = torch.export.export(model, _seq_lengths()(*EXAMPLE, g), dynamic_shapes=({0: B, 1: T}, {0: B}))
    targets = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
    assert not [t for t in targets if "pack" in t], sorted(targets)
    want_op = "rnnattn.export_lstm_layer" if cell == "lstm" else "rnnattn.export_rnn_layer"
    assert any(t.startswith(want_op) for t in targets), sorted(targets)
    for size in SIZES:
        x, lengths = _seq_lengths()(*size, g)
        got = ep.module()(x, lengths)
        with torch.no_grad():
            want = model(x, lengths)
        for o, w in zip(got, want):
            torch.testing.assert_close(o, w, rtol=0, atol=ATOL)


@needs_export
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


@needs_export
def test_packed_sequence_export_error_is_clear():
    """A PackedSequence's batch_sizes are data: torch.export cannot trace them,
    and says so, naming the module and what to export instead."""
    x = pack_padded_sequence(torch.randn(3, 5, 4), torch.tensor([5, 3, 2]), batch_first=True)
    for model in (rnnattn.GRU(4, 6, batch_first=True), rnnattn.RNNAttentionClassifier(3, 4, 6)):
        with pytest.raises(Exception, match="PackedSequence input cannot be exported"):
            torch.export.export(model.eval(), (x,))
