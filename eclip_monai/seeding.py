"""Seeds derived from a run seed and a position, so randomness never depends on what ran before.

Every random decision in training (the expert draw, the data order of a pass, an item's augmentation, the
network's mixup draw) takes its seed from ``derive_seed(run_seed, stream, position...)``. The same position
then gives the same draw on every DDP rank and after a restart from a checkpoint, which is what makes resume
exact, while different streams and neighbouring positions get unrelated seeds.
"""

from __future__ import annotations

import zlib

import numpy as np

MAX_SEED = 2**31  # fits numpy's RandomState and torch's manual_seed on every platform


def derive_seed(seed: int, stream: str, *position: int) -> int:
    """A seed in ``[0, 2**31)`` that is a pure function of ``(seed, stream, *position)``.

    Args:
        seed: the run's seed.
        stream: what the seed is for ("curriculum", "order", ...), so streams at the same position differ.
        position: non-negative counters (pass, iteration, rank...).
    """
    entropy = [int(seed) % 2**64, zlib.crc32(stream.encode()), *(int(p) for p in position)]
    return int(np.random.SeedSequence(entropy).generate_state(1)[0]) % MAX_SEED
