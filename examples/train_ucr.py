"""Univariate UCR classification (GunPoint by default; ArrowHead,
ItalyPowerDemand) with rnnattn.RNNAttentionClassifier.

A long univariate series is fed as frames: --frame N consecutive values form
one RNN step (GunPoint: 150 values -> 15 steps of 10 features), which an RNN
classifies far better than one scalar per step. --chunk-size K switches on
chunked, hierarchical pooling (softmax within chunks of K steps, then over
the chunks).

Published test accuracies on the official splits (UCR archive): GunPoint
1-NN Euclidean 0.913, 1-NN DTW 0.907, InceptionTime 1.0; ArrowHead 1-NN
Euclidean 0.800, 1-NN DTW 0.703.

Data: the .ts files ship inside the aeon (or sktime) wheel:

    pip install --no-deps aeon
    python examples/train_ucr.py --dataset GunPoint --seeds 0 1 2 --baseline --plot gunpoint_attention.png
"""
import argparse

import common
import rnnattn

DATASETS = ("GunPoint", "ArrowHead", "ItalyPowerDemand")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="GunPoint", help=f"a univariate UCR problem; aeon ships {', '.join(DATASETS)}")
    common.add_common_args(p, epochs=150, batch_size=8, lr=2e-3, hidden=32)
    p.add_argument("--frame", type=int, default=10,
                   help="feed the RNN frames of this many consecutive values as one step (1: one value per step)")
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--chunk-size", type=int, default=0,
                   help="pool within chunks of K steps, then over the chunks (0: one softmax over the whole series)")
    p.add_argument("--chunk-reduce", choices=("attention", "mean"), default="attention")
    args = p.parse_args(argv)

    def build(channels, classes):
        return rnnattn.RNNAttentionClassifier(
            classes, input_size=channels, hidden_size=args.hidden, cell=args.cell, bidirectional=True, heads=args.heads,
            chunk_size=args.chunk_size or None, chunk_reduce=args.chunk_reduce, head_dropout=0.2,
        )

    common.run(args, args.dataset, build, transform=lambda s: common.frames(s, args.frame),
               plot_frame=args.frame)


if __name__ == "__main__":
    main()
