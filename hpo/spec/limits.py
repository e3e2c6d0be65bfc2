"""Upper bounds on the numbers a user writes, so that none can exhaust memory or time.

Each is far beyond what the chapter's experiments use (the book: 100 trials of 50 epochs, six
hidden layers of 100), and each stops a value that would otherwise allocate or loop in
proportion to it: a set of every epoch, a tuple of every layer, a grid of every combination.
One table, so that the checks, their messages and the documentation agree.
"""

from __future__ import annotations

from hpo.errors import ConfigError

MAX_TRIALS = 1_000_000  # [study] n_trials, --n-trials
MAX_TIMEOUT_S = 10_000_000  # [study] timeout: about 115 days
MAX_SEED = 2**63 - 1  # [study] seed, [[enqueue]] seed: what a 64-bit integer holds
MAX_EPOCHS = 100_000  # [train] epochs
MAX_TOTAL_EPOCHS = 10**12  # [study] max_epochs: every trial's training, summed
MAX_LAYERS = 100  # hidden layers (the book: at most 7)
MAX_WIDTH = 65_536  # units in one hidden layer
MAX_PARAMETERS = 100_000_000  # weights of one network (about 2.4 GB with Adam's state)
MAX_SAMPLES = 10_000_000  # [data] n_samples
MAX_CHOICES = 1_000  # values of one categorical setting
MAX_GRID = 100_000  # trials of a grid (every combination)
MAX_WORKERS = 256  # hpo run --workers
MAX_SEEDS = 100  # hpo compare --seeds


def check_range(value: float, key: str, low: float, high: float) -> None:
    """`value` within [low, high], else a ConfigError naming `key` (a flag, an argument)."""
    if not low <= value <= high:
        raise ConfigError(f"must be from {low:,} to {high:,}, but got {value:,}", key=key)
