"""rnnattn.RNNAttentionClassifier: composition, variable lengths, chunked
pooling, weights semantics, token input, errors, saving and loading.

The oracle for variable-length handling is each sequence run alone, unpadded:
a sequence's logits and weights must not depend on what else is in the batch
or how it was padded or packed. The oracle for the returned weights is the
context they imply: sum_t weights_t * H_t (per head), fed to the output layer,
must give the logits.
"""
import io

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pack_sequence, pad_packed_sequence, pad_sequence

import rnnattn
from rnnattn import RNNAttentionClassifier

DT = torch.float64
TOL = dict(rtol=1e-10, atol=1e-12)


def make(seed=0, **kw):
    torch.manual_seed(seed)
    kw.setdefault("input_size", 3)
    kw.setdefault("hidden_size", 5)
    return RNNAttentionClassifier(4, dtype=DT, **kw).eval()


def seqs(lengths, features=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, features, generator=g, dtype=DT) for n in lengths]


def alone(model, xs):
    """Logits and weights of each sequence run by itself, unpadded."""
    outs = [model(x.unsqueeze(0) if model.batch_first else x.unsqueeze(1)) for x in xs]
    return [o[0][0] for o in outs], [o[1][0] for o in outs]


def check_against_alone(model, xs, logits, weights):
    ref_logits, ref_weights = alone(model, xs)
    torch.testing.assert_close(logits, torch.stack(ref_logits), **TOL)
    for i, (x, w) in enumerate(zip(xs, ref_weights)):
        n = len(x)
        torch.testing.assert_close(weights[i, ..., :n], w, **TOL)
        assert (weights[i, ..., n:] == 0).all(), "weights past a sequence's end must be zero"


CONFIGS = [
    dict(),
    dict(bidirectional=True),
    dict(num_layers=2, bidirectional=True, nonlinearity="relu"),
    dict(heads=3),
    dict(chunk_size=2),
    dict(chunk_size=3, chunk_reduce="mean", bidirectional=True),
    dict(chunk_size=2, heads=2, num_layers=2),
    dict(chunk_size=1),
    dict(chunk_size=8),  # one chunk covers every sequence
    dict(score="additive", attn_size=7, chunk_size=3, heads=2),
    dict(cell="gru", bidirectional=True),
    dict(cell="lstm", num_layers=2, bidirectional=True, chunk_size=2),
]


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()) or "default")
@pytest.mark.parametrize("lengths", [[5, 1, 7, 3], [1], [4, 4]], ids=str)
def test_variable_lengths_match_each_sequence_alone(cfg, lengths):
    model = make(**cfg)
    xs = seqs(lengths)
    T = max(lengths) + 2  # padding beyond the longest sequence too
    padded = torch.zeros(len(xs), T, 3, dtype=DT)
    for i, x in enumerate(xs):
        padded[i, : len(x)] = x
    padded_nan = padded.clone()
    for i, x in enumerate(xs):
        padded_nan[i, len(x) :] = float("nan")  # padding must never be read

    logits, weights = model(padded_nan, torch.tensor(lengths))
    assert logits.shape == (len(xs), 4)
    assert weights.shape == ((len(xs), T) if model.pool.heads == 1 else (len(xs), model.pool.heads, T))
    check_against_alone(model, xs, logits, weights)

    packed_logits, packed_weights = model(pack_sequence(xs, enforce_sorted=False))
    torch.testing.assert_close(packed_logits, logits, **TOL)
    assert packed_weights.shape[-1] == max(lengths)
    torch.testing.assert_close(packed_weights, weights[..., : max(lengths)], **TOL)


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()) or "default")
def test_weights_give_the_pooled_context(cfg):
    """out(sum_t w_t H_t) == logits, for every head and chunking: the returned
    weights are exactly what each step contributes; they sum to one per head."""
    model = make(**cfg)
    lengths = [6, 2, 5]
    xs = seqs(lengths)
    logits, weights = model(pack_sequence(xs, enforce_sorted=False))
    states, _ = pad_packed_sequence(model.rnn(pack_sequence(xs, enforce_sorted=False))[0], batch_first=True)
    w = weights if weights.dim() == 3 else weights.unsqueeze(1)  # (B, heads, T)
    context = torch.einsum("bht,btd->bhd", w, states).flatten(1)
    torch.testing.assert_close(model.out(context), logits, **TOL)
    torch.testing.assert_close(w.sum(-1), torch.ones(w.shape[:2], dtype=DT), **TOL)
    assert (w >= 0).all()


def test_chunked_hierarchy_by_hand():
    """chunk_reduce='attention' is the second pooling over the first one's chunk contexts."""
    model = make(chunk_size=3)
    x = seqs([8])[0].unsqueeze(0)
    states, _ = model.rnn(x)
    chunks, inner = model.pool(states)
    assert chunks.shape == (1, 3, 5)
    context, outer = model.chunk_pool(chunks)
    logits, weights = model(x)
    torch.testing.assert_close(logits, model.out(context), **TOL)
    torch.testing.assert_close(weights, inner * outer.repeat_interleave(3, 1)[:, :8], **TOL)

    mean_model = make(chunk_size=3, chunk_reduce="mean")
    assert mean_model.chunk_pool is None
    states, _ = mean_model.rnn(x)
    chunks, _ = mean_model.pool(states)
    torch.testing.assert_close(mean_model(x)[0], mean_model.out(chunks.mean(1)), **TOL)


def test_unchunked_model_is_rnn_then_pool_then_linear():
    model = make(bidirectional=True, heads=2)
    x = seqs([6])[0].unsqueeze(0)
    states, _ = model.rnn(x)
    context, w = model.pool(states)
    logits, weights = model(x)
    torch.testing.assert_close(logits, model.out(context), **TOL)
    torch.testing.assert_close(weights, w, **TOL)


def test_time_major_layout():
    model = make(bidirectional=True, batch_first=False)
    xs = seqs([4, 6, 1])
    padded = pad_sequence(xs)  # (T, B, F)
    logits, weights = model(padded, [4, 6, 1])
    assert weights.shape == (3, 6)  # weights stay batch-major
    check_against_alone(model, xs, logits, weights)


def test_equal_lengths_without_lengths_argument():
    model = make(bidirectional=True)
    xs = seqs([5, 5])
    x = torch.stack(xs)
    torch.testing.assert_close(model(x)[0], model(x, [5, 5])[0], **TOL)
    check_against_alone(model, xs, *model(x))


@pytest.mark.parametrize("kw", [{}, dict(chunk_size=2, bidirectional=True)])
def test_empty_batch_with_and_without_lengths(kw):
    """B = 0 gives empty logits and weights either way (lengths of shape (0,)
    were handed to pack_padded_sequence, which refuses an empty batch)."""
    model = make(**kw)
    x = torch.randn(0, 5, model.rnn.input_size, dtype=torch.float64)
    for out in (model(x), model(x, torch.zeros(0, dtype=torch.long))):
        assert [t.shape for t in out] == [(0, 4), (0, 5)]


@pytest.mark.parametrize("packed", [False, True])
def test_token_ids(packed):
    torch.manual_seed(0)
    model = RNNAttentionClassifier(
        3, vocab_size=11, embedding_dim=4, hidden_size=5, padding_idx=0, bidirectional=True, dtype=DT
    ).eval()
    assert model.embedding.weight.dtype == DT
    g = torch.Generator().manual_seed(2)
    tokens = [torch.randint(1, 11, (n,), generator=g) for n in (3, 6, 1)]
    if packed:
        logits, weights = model(pack_sequence(tokens, enforce_sorted=False))
    else:
        logits, weights = model(pad_sequence(tokens, batch_first=True), torch.tensor([3, 6, 1]))
    ref = [model(t.unsqueeze(0)) for t in tokens]
    torch.testing.assert_close(logits, torch.cat([r[0] for r in ref]), **TOL)
    torch.testing.assert_close(weights[0, :3], ref[0][1][0], **TOL)
    # the same model computed with the embedding applied by hand
    feats = [model.embedding(t) for t in tokens]
    by_hand = RNNAttentionClassifier(3, input_size=4, hidden_size=5, bidirectional=True, dtype=DT).eval()
    by_hand.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("embedding.")})
    torch.testing.assert_close(by_hand(pack_sequence(feats, enforce_sorted=False))[0], logits, **TOL)


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_same_as_torch_rnn_swapped_in(cell):
    """The classifier's recurrent layer is a drop-in for torch's module: the
    same weights in nn.RNN / nn.GRU / nn.LSTM give the same logits and the
    same gradients."""
    model = make(num_layers=2, bidirectional=True, chunk_size=2, cell=cell)
    twin = make(num_layers=2, bidirectional=True, chunk_size=2, cell=cell)
    r = twin.rnn
    twin.rnn = getattr(nn, type(r).__name__)(3, 5, 2, batch_first=True, bidirectional=True, dtype=DT)
    twin.rnn.load_state_dict(r.state_dict())
    xs = seqs([7, 2, 4])
    outs = [m(pack_sequence(xs, enforce_sorted=False))[0] for m in (model, twin)]
    torch.testing.assert_close(outs[0], outs[1], **TOL)
    for o in outs:
        o.square().sum().backward()
    for (name, p), q in zip(model.named_parameters(), twin.parameters()):
        torch.testing.assert_close(p.grad, q.grad, **TOL, msg=lambda m: f"{name}: {m}")


def test_gradcheck_through_packed_input():
    model = make(bidirectional=True, chunk_size=2, heads=2)
    xs = seqs([3, 1, 4])
    packed = pack_sequence(xs, enforce_sorted=False)
    data = packed.data.clone().requires_grad_()

    def f(d):
        logits, weights = model(packed._replace(data=d))
        return logits, weights

    assert torch.autograd.gradcheck(f, (data,))
    logits, _ = model(packed)
    logits.sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"{name} got no gradient"


def test_learns_a_toy_task():
    """Class = which channel carries a single spike, at a random position in a
    sequence of random length: needs the lengths and the attention to work."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    model = RNNAttentionClassifier(3, input_size=3, hidden_size=16, bidirectional=True)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)

    def batch(n=32):
        lengths = torch.randint(3, 12, (n,), generator=g)
        y = torch.randint(0, 3, (n,), generator=g)
        x = 0.1 * torch.randn(n, 12, 3, generator=g)
        for i in range(n):
            x[i, torch.randint(0, int(lengths[i]), (1,), generator=g), y[i]] += 3.0
        return x, lengths, y

    for _ in range(60):
        x, lengths, y = batch()
        loss = nn.functional.cross_entropy(model(x, lengths)[0], y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    x, lengths, y = batch(200)
    with torch.no_grad():
        acc = (model.eval()(x, lengths)[0].argmax(1) == y).double().mean()
    assert acc > 0.9, f"toy accuracy {acc:.3f}"


def _roundtrip_inputs():
    return pack_sequence(seqs([5, 2, 3]), enforce_sorted=False)


@pytest.mark.parametrize("cfg", [dict(), dict(chunk_size=2, bidirectional=True, heads=2)], ids=["plain", "chunked"])
def test_state_dict_roundtrip(cfg):
    model = make(**cfg)
    x = _roundtrip_inputs()
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    buf.seek(0)
    fresh = make(seed=123, **cfg)
    assert not torch.equal(fresh(x)[0], model(x)[0])
    fresh.load_state_dict(torch.load(buf, weights_only=True))
    torch.testing.assert_close(fresh(x)[0], model(x)[0], rtol=0, atol=0)
    torch.testing.assert_close(fresh(x)[1], model(x)[1], rtol=0, atol=0)


def test_whole_module_save_load(tmp_path):
    model = make(chunk_size=2, bidirectional=True)
    x = _roundtrip_inputs()
    path = tmp_path / "model.pt"
    torch.save(model, path)
    loaded = torch.load(path, weights_only=False)
    assert type(loaded) is RNNAttentionClassifier and isinstance(loaded.rnn, rnnattn.RNN)
    torch.testing.assert_close(loaded(x)[0], model(x)[0], rtol=0, atol=0)
    # still trainable after loading
    loaded.train()(x)[0].sum().backward()
    assert all(p.grad is not None for p in loaded.parameters())


def test_factory_kwargs_and_dropout_modes():
    model = RNNAttentionClassifier(2, input_size=3, hidden_size=4, num_layers=2, dropout=0.5, head_dropout=0.5,
                                   chunk_size=2, dtype=DT)
    assert all(p.dtype == DT for p in model.parameters())
    x = torch.randn(3, 5, 3, dtype=DT)
    model.eval()
    torch.testing.assert_close(model(x)[0], model(x)[0], rtol=0, atol=0)
    model.train()
    torch.manual_seed(0)
    a = model(x)[0]
    torch.manual_seed(1)
    assert not torch.equal(a, model(x)[0]), "dropout has no effect in training mode"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(), "exactly one of input_size"),
        (dict(input_size=3, vocab_size=5), "exactly one of input_size"),
        (dict(input_size=3, chunk_size=2, chunk_reduce="max"), "chunk_reduce"),
        (dict(input_size=3, cell="transformer"), "cell must be one of"),
        (dict(input_size=3, cell="gru", nonlinearity="relu"), "nonlinearity applies to cell='rnn' only"),
    ],
)
def test_bad_construction(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RNNAttentionClassifier(2, **kwargs)


def test_bad_inputs():
    model = make()
    x = torch.randn(2, 4, 3, dtype=DT)
    with pytest.raises(ValueError, match=r"lengths must lie in \[1, T=4\]"):
        model(x, torch.tensor([0, 4]))
    with pytest.raises(ValueError, match=r"lengths must lie in \[1, T=4\]"):
        model(x, torch.tensor([5, 4]))
    with pytest.raises(ValueError, match=r"shape \(B,\) = \(2,\)"):
        model(x, torch.tensor([4, 4, 4]))
    with pytest.raises(ValueError, match="integer tensor"):
        model(x, torch.tensor([4.0, 4.0]))
    with pytest.raises(ValueError, match="lengths must be None for PackedSequence"):
        model(pack_padded_sequence(x, [4, 4], batch_first=True), torch.tensor([4, 4]))
    with pytest.raises(ValueError, match="F = input_size = 3"):
        model(torch.randn(2, 4, 5, dtype=DT))
    with pytest.raises(ValueError, match="floating point"):
        model(torch.ones(2, 4, 3, dtype=torch.long))
    tokens = RNNAttentionClassifier(2, vocab_size=5, hidden_size=4)
    with pytest.raises(ValueError, match="integer token ids"):
        tokens(torch.randn(2, 4))
    with pytest.raises(ValueError, match="integer token ids"):
        tokens(torch.ones(2, 4, 1, dtype=torch.long))


def test_compile_fullgraph_padded():
    """Equal-length padded input compiles into one graph. (Variable lengths are
    data-dependent -- packing, length checks -- and compile with graph breaks.)"""
    model = make(bidirectional=True, heads=2)
    x = torch.randn(2, 5, 3, dtype=DT)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    logits, weights = compiled(x)
    ref_logits, ref_weights = model(x)
    torch.testing.assert_close(logits, ref_logits, **TOL)
    torch.testing.assert_close(weights, ref_weights, **TOL)


def test_exported():
    assert "RNNAttentionClassifier" in rnnattn.__all__
    assert rnnattn.RNNAttentionClassifier is RNNAttentionClassifier
