"""Every seed derives from one user-given seed, so any run can be replayed exactly."""

from __future__ import annotations

import numpy as np

# Streams derived from one run seed; fixed numbers so that a replay derives the same ones.
INIT_STREAM = 0
SHUFFLE_STREAM = 1


def derive_seed(seed: int, *path: int) -> int:
    """A 32-bit seed for the stream at `path` below `seed` (e.g. (trial_number, INIT_STREAM)).

    SeedSequence hashes the whole path, so neighbouring seeds and trial numbers give
    independent streams, unlike `seed + trial_number`.
    """
    return int(np.random.SeedSequence([seed, *path]).generate_state(1)[0])
