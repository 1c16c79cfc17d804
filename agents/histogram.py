"""Quantiles estimated from a Prometheus histogram's cumulative buckets, the way ``histogram_quantile`` does.

Within the bucket that holds the rank asked for, observations are taken to be spread evenly
(linear interpolation); the first bucket starts at 0; a rank in the ``+Inf`` bucket is given
the largest finite bound, since nothing more is known of it.
"""

from __future__ import annotations

import bisect
import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = ["histogram_quantile"]


def histogram_quantile(q: float, buckets: Mapping[float, float]) -> float | None:
    """The ``q``-quantile (0 to 1) of the observations ``buckets`` holds (upper bound -> cumulative count).

    None when nothing can be said: no observation, no ``+Inf`` bucket, or fewer than two buckets.
    """
    if not 0 <= q <= 1:
        raise ValueError(f"a quantile is between 0 and 1, not {q}")
    bounds = sorted(buckets)
    if len(bounds) < 2 or bounds[-1] != math.inf:
        return None
    # Counts scraped while observations arrive can dip between buckets: each is at least the one before.
    counts: list[float] = []
    for bound in bounds:
        counts.append(max(buckets[bound], counts[-1] if counts else 0.0))
    total = counts[-1]
    if total <= 0:
        return None
    rank = q * total
    # The first bucket whose count reaches the rank (the +Inf bucket when no finite one does).
    index = bisect.bisect_left(counts, rank, hi=len(counts) - 1)
    if index == len(bounds) - 1:
        return bounds[-2]
    upper = bounds[index]
    if index == 0:
        if upper <= 0:
            return upper
        lower, below = 0.0, 0.0
    else:
        lower, below = bounds[index - 1], counts[index - 1]
    inside = counts[index] - below
    if inside <= 0:  # q = 0 on an empty first bucket: its lower edge
        return lower
    return lower + (upper - lower) * (rank - below) / inside
