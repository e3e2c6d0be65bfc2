"""Every seed derives from one user-given seed, so any run can be replayed exactly."""

from __future__ import annotations

import hashlib

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


def name_key(name: str) -> int:
    """A stable 32-bit number for a study's name, to mix into its sampler and trial seeds.

    Studies that share a seed (and so a data split: the arms of a comparison, the stages of
    a narrowing) must still draw independently, or they would repeat each other's trials.
    """
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=4).digest(), "big")
