"""RNNAttentionClassifier under DistributedDataParallel (gloo, CPU): two
processes, each on half of a batch, must produce the gradients (DDP's average)
and, after a few SGD steps, the parameters of one process on the whole batch.

Variable lengths (packed), bidirectional two-layer RNN and chunked
hierarchical pooling all run on the fused ops; float64 so the comparison can
be tight (the only difference is the order of a sum of two halves).
"""
import datetime
import os
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch.nn.utils.rnn import pack_sequence

import rnnattn

WORLD = 2
STEPS = 3
LR = 0.1
TIMEOUT_S = 120


def _model():
    torch.manual_seed(0)
    return rnnattn.RNNAttentionClassifier(
        3, input_size=4, hidden_size=6, num_layers=2, bidirectional=True, heads=2, chunk_size=3,
        dtype=torch.float64,
    )


def _batch():
    g = torch.Generator().manual_seed(1)
    lengths = [7, 2, 5, 1, 8, 4]  # 3 per process, unequal in each half
    xs = [torch.randn(n, 4, generator=g, dtype=torch.float64) for n in lengths]
    ys = torch.randint(0, 3, (len(lengths),), generator=g)
    return xs, ys


def _train(model, xs, ys, record):
    """STEPS of SGD on mean cross-entropy; ``record(step, model)`` after each backward."""
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    for step in range(STEPS):
        logits, _ = model(pack_sequence(xs, enforce_sorted=False))
        loss = F.cross_entropy(logits, ys)
        opt.zero_grad()
        loss.backward()
        record(step, model)
        opt.step()


def _named_grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters()}


def _worker(rank, store_path, out_dir):
    dist.init_process_group(
        "gloo", init_method=f"file://{store_path}", rank=rank, world_size=WORLD,
        timeout=datetime.timedelta(seconds=TIMEOUT_S),
    )
    try:
        torch.set_num_threads(1)
        model = _model()
        assert type(model.rnn) is rnnattn.RNN and rnnattn.ops.has_kernel(torch.device("cpu"), torch.float64)
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        xs, ys = _batch()
        half = len(xs) // WORLD
        mine = slice(rank * half, (rank + 1) * half)
        grads = []
        _train(ddp, xs[mine], ys[mine], lambda step, m: grads.append(_named_grads(m.module)))
        params = {n: p.detach().clone() for n, p in model.named_parameters()}
        torch.save({"grads": grads, "params": params}, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_ddp_two_processes_match_one(tmp_path):
    ctx = mp.start_processes(
        _worker, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=WORLD, join=False, start_method="spawn"
    )
    deadline = time.monotonic() + TIMEOUT_S
    while not ctx.join(timeout=1):  # raises if a worker failed
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail(f"DDP workers did not finish in {TIMEOUT_S} s")

    xs, ys = _batch()
    model = _model()
    grads = []
    _train(model, xs, ys, lambda step, m: grads.append(_named_grads(m)))
    params = {n: p.detach() for n, p in model.named_parameters()}

    tol = dict(rtol=1e-10, atol=1e-12)
    for rank in range(WORLD):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        for step in range(STEPS):
            for name, g in grads[step].items():
                torch.testing.assert_close(got["grads"][step][name], g, **tol,
                                           msg=lambda m: f"rank {rank} step {step} grad {name}: {m}")
        for name, p in params.items():
            torch.testing.assert_close(got["params"][name], p, **tol, msg=lambda m: f"rank {rank} param {name}: {m}")
    # the comparison is not vacuous: the halves alone give other gradients
    half_model = _model()
    half = []
    _train(half_model, xs[:3], ys[:3], lambda step, m: half.append(_named_grads(m)))
    assert not torch.allclose(half[0]["out.weight"], grads[0]["out.weight"])
