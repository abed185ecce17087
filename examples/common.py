"""Training loop, evaluation, timing and plotting shared by the examples.

Batches are PackedSequences of the true-length series (no padding reaches the
RNN or the softmax). ``--baseline`` times the same model, same initial weights
and same batches, with ``torch.nn.RNN`` in place of ``rnnattn.RNN``.
"""
import argparse
import copy
import glob
import os
import random
import sys
import time
from typing import Callable, List, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_sequence

# The rnnattn that is installed, unless this clone has a built extension
# (`python setup.py build_ext --inplace` or an editable install): an unbuilt
# source tree first on sys.path would shadow the installed package.
_TREE = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))
if glob.glob(os.path.join(_TREE, "rnnattn", "_C*")):
    sys.path.insert(0, _TREE)
try:
    import rnnattn  # noqa: E402
except ImportError as err:  # the examples run from a source tree too
    raise SystemExit(
        f"{err}\nBuild rnnattn first: `pip install --no-build-isolation .` or, in a source tree, "
        "`python setup.py build_ext --inplace` (see README)."
    )

from tqdm.auto import tqdm  # noqa: E402

import ts_data  # noqa: E402


class SeqData:
    """Series as float tensors ``(T_i, C)`` plus int64 labels."""

    def __init__(self, series: Sequence[np.ndarray], labels: np.ndarray, dtype=torch.float32):
        self.series = [torch.as_tensor(s, dtype=dtype) for s in series]
        self.labels = torch.as_tensor(labels, dtype=torch.long)

    def __len__(self):
        return len(self.series)

    def batches(self, batch_size: int, generator: torch.Generator = None):
        """PackedSequence batches, shuffled when ``generator`` is given."""
        order = torch.randperm(len(self), generator=generator) if generator is not None else torch.arange(len(self))
        for i in range(0, len(self), batch_size):
            idx = order[i : i + batch_size].tolist()
            yield pack_sequence([self.series[j] for j in idx], enforce_sorted=False), self.labels[idx]


def load_standardized(problem: str, data_dir: str = None, dtype=torch.float32):
    """Train/test splits of ``problem``, each channel standardized with the
    training split's mean and std (the test split's statistics are not used)."""
    train = ts_data.load_split(problem, "TRAIN", data_dir)
    test = ts_data.load_split(problem, "TEST", data_dir)
    steps = np.concatenate(train.series, 0)
    mean, std = steps.mean(0), steps.std(0) + 1e-8
    norm = lambda d: SeqData([(s - mean) / std for s in d.series], d.labels, dtype)  # noqa: E731
    return norm(train), norm(test), train.classes


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def with_torch_rnn(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose rnnattn recurrent layer (``model.rnn``:
    RNN, GRU or LSTM) is replaced by torch's module of the same kind,
    configuration and weights."""
    model = copy.deepcopy(model)
    r = model.rnn
    torch_cls = getattr(nn, type(r).__name__)
    extra = {"nonlinearity": r.nonlinearity} if torch_cls is nn.RNN else {}
    ref = torch_cls(
        r.input_size, r.hidden_size, r.num_layers, bias=r.bias, batch_first=r.batch_first, dropout=r.dropout,
        bidirectional=r.bidirectional, **extra,
    ).to(next(r.parameters()))
    ref.load_state_dict(r.state_dict())
    model.rnn = ref
    return model


def train(model: nn.Module, data: SeqData, epochs: int, batch_size: int, lr: float, weight_decay: float,
          seed: int, desc: str = "train", progress: bool = True) -> Tuple[float, float]:
    """AdamW with a one-cycle learning rate. Returns (wall, CPU) seconds: on a
    shared machine the process's CPU time is the steadier measure of work."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    steps = epochs * ((len(data) + batch_size - 1) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    gen = torch.Generator().manual_seed(seed)  # same batch order for every model trained with this seed
    model.train()
    start, cpu_start = time.perf_counter(), time.process_time()
    bar = tqdm(range(epochs), desc=desc, disable=not progress, leave=False, dynamic_ncols=True)
    for _ in bar:
        total, correct, count = 0.0, 0, 0
        for x, y in data.batches(batch_size, gen):
            logits, _ = model(x)
            loss = F.cross_entropy(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(y)
            correct += (logits.argmax(1) == y).sum().item()
            count += len(y)
        bar.set_postfix(loss=f"{total / count:.3f}", acc=f"{correct / count:.3f}")
    return time.perf_counter() - start, time.process_time() - cpu_start


@torch.no_grad()
def accuracy(model: nn.Module, data: SeqData, batch_size: int = 256) -> float:
    model.eval()
    correct = sum((model(x)[0].argmax(1) == y).sum().item() for x, y in data.batches(batch_size))
    return correct / len(data)


@torch.no_grad()
def plot_attention(model: nn.Module, data: SeqData, classes: List[str], path: str, count: int = 4,
                   title: str = "", frame: int = 1) -> None:
    """Saves a PNG: for ``count`` test sequences, the input (a heat map of the
    standardized channels, or the curve of a univariate series) with the
    attention weight of each step drawn over it. ``frame > 1``: the inputs are
    :func:`frames` of a univariate series, drawn as that series with one
    attention bar per frame."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    model.eval()
    # one sequence of each of the first classes, so the panels differ
    picks, seen = [], set()
    for i, y in enumerate(data.labels.tolist()):
        if y not in seen:
            picks.append(i)
            seen.add(y)
        if len(picks) == count:
            break
    x = pack_sequence([data.series[i] for i in picks], enforce_sorted=False)
    logits, weights = model(x)
    heads = weights.size(1) if weights.dim() == 3 else 1
    if heads > 1:  # show their mean
        weights = weights.mean(1)
    fig, axes = plt.subplots(len(picks), 1, figsize=(7, 1.9 * len(picks)), squeeze=False)
    for row, i in enumerate(picks):
        ax = axes[row, 0]
        s = data.series[i].numpy()
        w = weights[row, : len(s)].numpy()
        steps = np.arange(len(s)) * frame + (frame - 1) / 2  # bar centre of each RNN step
        if frame > 1:
            s = s.reshape(-1, 1)
        T = len(s)
        if s.shape[1] == 1:
            ax.plot(np.arange(T), s[:, 0], color="0.3", lw=1.2)
            ax.set_ylabel("value")
        else:
            ax.imshow(s.T, aspect="auto", cmap="coolwarm", vmin=-3, vmax=3, extent=(-0.5, T - 0.5, s.shape[1], 0),
                      interpolation="nearest")
            ax.set_ylabel("channel")
        ax2 = ax.twinx()
        if s.shape[1] == 1:
            ax2.bar(steps, w, width=0.8 * frame if len(w) < 60 else frame, color="tab:orange", alpha=0.55)
        else:  # a line, so the heat map stays visible
            ax2.plot(steps, w, "-o", color="black", lw=1.8, ms=3.5)
            ax2.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax2.set_ylim(0, max(float(w.max()) * 1.15, 1e-6))
        ax2.set_ylabel("attention" + (" (mean of heads)" if heads > 1 else ""),
                       color="tab:orange" if s.shape[1] == 1 else "black", fontsize=8)
        pred = classes[int(logits[row].argmax())]
        ax.set_title(f"test #{i}: class {classes[int(data.labels[i])]}, predicted {pred}, {len(w)} steps", fontsize=9)
        ax.set_xlim(-0.5, T - 0.5)
    axes[-1, 0].set_xlabel("time step" if frame == 1 else f"time step (one RNN step = {frame} values)")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def add_common_args(p: argparse.ArgumentParser, epochs: int, batch_size: int, lr: float, hidden: int) -> None:
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="one run per seed (default: 0)")
    p.add_argument("--epochs", type=int, default=epochs)
    p.add_argument("--batch-size", type=int, default=batch_size)
    p.add_argument("--lr", type=float, default=lr)
    p.add_argument("--weight-decay", type=float, default=1e-2)
    p.add_argument("--hidden", type=int, default=hidden, help="RNN hidden size per direction")
    p.add_argument("--threads", type=int, default=1,
                   help="torch.set_num_threads (default 1: these batches are too small for more threads to pay; "
                        "0 keeps torch's default)")
    p.add_argument("--cell", choices=["rnn", "gru", "lstm"], default="rnn",
                   help="recurrent layer: rnnattn.RNN, GRU or LSTM")
    p.add_argument("--baseline", action="store_true",
                   help="also train the same model with torch's module (nn.RNN/GRU/LSTM) swapped in, and print both")
    p.add_argument("--plot", metavar="FILE.png", help="save the attention weights over a few test sequences")
    p.add_argument("--data-dir", help="folder holding <Problem>_TRAIN.ts / _TEST.ts (default: the aeon or "
                   "sktime package's data, installed with `pip install --no-deps aeon`)")
    p.add_argument("--no-progress", action="store_true", help="no tqdm bar")


def frames(series: torch.Tensor, size: int) -> torch.Tensor:
    """``(T, 1)`` -> ``(ceil(T / size), size)``: each step holds ``size``
    consecutive values (the last frame padded with the last value). A long
    univariate series becomes a shorter multivariate one, which an RNN
    classifies far more easily than one scalar per step."""
    if size == 1:
        return series
    if series.shape[1] != 1:
        raise ValueError(f"frames: expected a univariate series (T, 1), got {tuple(series.shape)}")
    x = series[:, 0]
    pad = -len(x) % size
    x = torch.cat([x, x[-1:].expand(pad)])
    return x.view(-1, size)


def run(args, problem: str, build: Callable[[int, int], nn.Module], transform: Callable = None,
        plot_frame: int = 1) -> None:
    """Trains ``build(channels, num_classes)`` once per seed (and its nn.RNN
    twin with ``--baseline``) and prints test accuracy and training time.
    ``transform`` maps each standardized series tensor ``(T, C)`` to the
    model's input ``(T', C')`` (``plot_frame``: see :func:`plot_attention`)."""
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        train_data, test_data, classes = load_standardized(problem, args.data_dir)
    except FileNotFoundError as err:
        raise SystemExit(f"error: {err}")
    if transform is not None:
        for d in (train_data, test_data):
            d.series = [transform(s) for s in d.series]
    channels = train_data.series[0].shape[1]
    lengths = [len(s) for s in train_data.series + test_data.series]
    print(f"{problem}: {len(train_data)} train / {len(test_data)} test sequences, {channels} feature(s) per step, "
          f"lengths {min(lengths)}-{max(lengths)}, {len(classes)} classes; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    kind = {"rnn": "RNN", "gru": "GRU", "lstm": "LSTM"}[args.cell]
    ours = f"rnnattn.{kind}"
    variants = [(ours, lambda m: m)] + ([(f"torch.nn.{kind}", with_torch_rnn)] if args.baseline else [])
    results = {name: [] for name, _ in variants}
    for seed in args.seeds:
        set_seed(seed)
        initial = build(channels, len(classes))
        if seed == args.seeds[0]:
            print(initial)
        for name, make in variants:
            model = make(copy.deepcopy(initial))
            wall, cpu = train(model, train_data, args.epochs, args.batch_size, args.lr, args.weight_decay, seed,
                            desc=f"seed {seed} {name}", progress=not args.no_progress)
            acc = accuracy(model, test_data)
            results[name].append((acc, wall, cpu))
            print(f"seed {seed}  {name:14s} test accuracy {acc:.4f}  train time {wall:6.1f} s (CPU {cpu:6.1f} s)")
            if args.plot and name == ours and seed == args.seeds[0]:
                plot_attention(model, test_data, classes, args.plot,
                               title=f"{problem}: attention over test sequences (seed {seed}, accuracy {acc:.3f})",
                               frame=plot_frame)
                print(f"saved {args.plot}")
    if len(args.seeds) > 1 or args.baseline:
        print(f"\nsummary over seeds {args.seeds} ({args.epochs} epochs):")
        for name, rs in results.items():
            acc, wall, cpu = np.array(rs).T
            print(f"  {name:14s} test accuracy {acc.mean():.4f} +- {acc.std():.4f} (min {acc.min():.4f})  "
                  f"train time {wall.mean():6.1f} s +- {wall.std():.1f} (CPU {cpu.mean():6.1f} s)")
