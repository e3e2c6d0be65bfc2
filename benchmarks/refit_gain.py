"""What `[evaluation] refit = true` is worth: the final model trained on the whole search pool
(training + validation) against the book's, trained on the training split alone.

    HPO_DATA_DIR=../shared/data python benchmarks/refit_gain.py [--seeds 12] [--lr 0.0095 0.005]

The book's 6.5 setting (MNIST, the first 500 images split 400/100, 784-[100]x6-10, SGD, 50
epochs; the other 9,500 images are the test split). For each learning rate and each seed k,
the study split of seed k and one training seed: the network trained on the 400 and the
network trained on all 500 with the same seed, both scored once on the test split. Paired by
seed, so the data size is the only difference. No configuration is chosen here: the rates are
given, and the test split only measures.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import numpy as np

from hpo.engine.objective import train_trial
from hpo.engine.protocols import search_pool
from hpo.spec.data import load_splits
from hpo.spec.load import load_study

BOOK = Path(__file__).resolve().parent.parent / "studies" / "book-6.5.toml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=12)
    parser.add_argument("--lr", type=float, nargs="+", default=[0.0095, 0.005])
    parser.add_argument("--weight-decay", type=float, default=1e-6)
    args = parser.parse_args()
    spec = load_study(BOOK)
    print(f"{spec.data.describe()}; {args.seeds} seeds, weight decay {args.weight_decay:g}")
    for lr in args.lr:
        config = spec.base.replace(lr=lr, weight_decay_lambda=args.weight_decay)
        split_only, pool_too = [], []
        for k in range(args.seeds):
            splits = load_splits(spec.data, seed=k)
            x_test, t_test = splits.test()
            seed = 1000 + k
            network, _ = train_trial(splits, config, seed)
            split_only.append(network.evaluate(x_test, t_test)[1])
            pool = search_pool(splits, seed)
            refit, _ = train_trial(pool, config, seed)
            pool_too.append(refit.evaluate(x_test, t_test)[1])
        gains = np.array(pool_too) - np.array(split_only)
        print(
            f"lr {lr:g}: test acc trained on {len(splits.t_train)} "
            f"{statistics.fmean(split_only):.3f} (sd {statistics.stdev(split_only):.3f}), on "
            f"{len(pool.t_train)} {statistics.fmean(pool_too):.3f} "
            f"(sd {statistics.stdev(pool_too):.3f}); paired gain median {np.median(gains):+.3f}, "
            f"better in {int((gains > 0).sum())} of {args.seeds} seeds"
        )


if __name__ == "__main__":
    main()
