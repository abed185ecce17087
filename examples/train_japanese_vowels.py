"""Speaker identification on the UEA JapaneseVowels set with
rnnattn.RNNAttentionClassifier.

9 speakers, 12 LPC cepstrum channels, utterances of 7 to 29 frames; the
official split has 270 training and 370 test utterances. Published test
accuracies on this split: 1-NN DTW about 0.95, InceptionTime 0.992.

Data: the .ts files ship inside the aeon (or sktime) wheel; only they are
needed, so install without dependencies:

    pip install --no-deps aeon
    python examples/train_japanese_vowels.py --seeds 0 1 2 --baseline --plot jv_attention.png
"""
import argparse

import common
import rnnattn


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_common_args(p, epochs=40, batch_size=16, lr=5e-3, hidden=64)
    p.add_argument("--layers", type=int, default=1)
    p.add_argument("--unidirectional", action="store_true")
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--chunk-size", type=int, default=None, help="pool per chunk of K steps, then attend over chunks")
    args = p.parse_args(argv)

    def build(channels, classes):
        return rnnattn.RNNAttentionClassifier(
            classes, input_size=channels, hidden_size=args.hidden, num_layers=args.layers,
            cell=args.cell, bidirectional=not args.unidirectional, heads=args.heads, chunk_size=args.chunk_size,
            head_dropout=0.2,
        )

    common.run(args, "JapaneseVowels", build)


if __name__ == "__main__":
    main()
