"""Capped exponential backoff with full jitter (pure; the caller sleeps)."""

from __future__ import annotations

import random


def backoff_delay(attempt: int, minimum: float, maximum: float, rng: random.Random | None = None) -> float:
    """Delay before retry number ``attempt`` (0-based): uniform in [minimum, min(maximum, minimum·2^attempt)].

    Full jitter spreads thousands of gateways that lost the same store at the same moment,
    so they do not all come back in the same second.
    """
    if attempt < 0 or minimum <= 0 or maximum < minimum:
        raise ValueError("need attempt >= 0 and 0 < minimum <= maximum")
    cap = min(maximum, minimum * (2 ** min(attempt, 62)))
    r = (rng or random).random()
    return minimum + (cap - minimum) * r
