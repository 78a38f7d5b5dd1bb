"""Per-round learning rate (SPEC §2): linear warmup over the first rounds, then cosine decay."""

from __future__ import annotations

import math


def warmup_rounds(total_rounds: int, warmup_ratio: float, use_warmup: bool) -> int:
    # Rounded first: 0.07 * 100 is 7.000000000000001 in floating point, and means 7 rounds.
    return int(math.ceil(round(warmup_ratio * total_rounds, 9))) if use_warmup else 0


def lr_for_round(
    round_num: int,
    total_rounds: int,
    lr: float,
    lr_min: float,
    warmup_ratio: float = 0.0,
    use_warmup: bool = True,
) -> float:
    """Learning rate of round ``round_num`` (1-based).

    Warmup rounds ``1..W`` ramp linearly to ``lr`` (``lr * r / W``); the remaining rounds follow a
    cosine from ``lr`` (first round after warmup) down to ``lr_min`` (last round).
    """
    if round_num < 1:
        raise ValueError("rounds are numbered from 1")
    w = warmup_rounds(total_rounds, warmup_ratio, use_warmup)
    if round_num <= w:
        return lr * round_num / w
    decay_rounds = total_rounds - w
    if decay_rounds <= 1:
        return lr
    progress = min(1.0, (round_num - w - 1) / (decay_rounds - 1))
    return lr_min + 0.5 * (lr - lr_min) * (1.0 + math.cos(math.pi * progress))
