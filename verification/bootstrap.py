"""The moving-block bootstrap over init times, shared by the targets' intervals and the
scorecards' significance.

Forecasts from inits closer together than their longest lead share valid times, so their
errors are correlated, and an iid bootstrap over inits would give intervals too narrow. A
moving-block bootstrap (Kuensch 1989) draws blocks of consecutive inits instead: the default
block spans the longest lead (`default_block`: 2 for 10-day leads from inits 5 days apart).
"""

from __future__ import annotations

import math

import numpy as np


def default_block(inits: np.ndarray, leads: np.ndarray) -> int:
    """Inits a block spans: the longest lead over the init spacing, rounded up (at least 1;
    1 for inits that are not times).

    Example:
        >>> inits = np.datetime64("2031-01-01") + np.arange(4) * np.timedelta64(5, "D")
        >>> default_block(inits, np.array([0, 10], "timedelta64[D]"))
        2
    """
    if len(inits) < 2 or np.asarray(inits).dtype.kind != "M":
        return 1
    spacing = float(np.median(np.diff(inits)) / np.timedelta64(1, "h"))
    longest = float(np.max(leads) / np.timedelta64(1, "h"))
    return max(1, math.ceil(longest / spacing))


def block_resample(count: int, block: int, rng: np.random.Generator) -> np.ndarray:
    """Positions of a moving-block bootstrap resample of `count` inits: blocks of `block`
    consecutive positions, their starts drawn uniformly with replacement, joined and cut to
    `count` (Kuensch 1989).

    Example:
        >>> block_resample(5, 2, np.random.default_rng(0)).tolist()
        [3, 4, 2, 3, 2]
    """
    starts = rng.integers(0, count - block + 1, size=math.ceil(count / block))
    return (starts[:, None] + np.arange(block)).ravel()[:count]


def block_resamples(count: int, block: int, resamples: int, seed: int = 0) -> np.ndarray:
    """`resamples` draws of `block_resample`, one per row: shape (resamples, count)."""
    rng = np.random.default_rng(seed)
    return np.stack([block_resample(count, block, rng) for _ in range(resamples)])
