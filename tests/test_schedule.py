"""Per-round learning rate: linear warmup, then cosine from lr to lr_min (SPEC §2)."""

from __future__ import annotations

import itertools
import math

import pytest

from spearfl.algorithms.schedule import lr_for_round, warmup_rounds

LR, LR_MIN = 5e-5, 1e-5


def _lr(r, total, ratio=0.1, use_warmup=True):
    return lr_for_round(r, total, LR, LR_MIN, ratio, use_warmup)


def test_ten_rounds_with_one_warmup_round():
    assert warmup_rounds(10, 0.1, True) == 1
    assert _lr(1, 10) == pytest.approx(5e-5)  # warmup of 1 round: 5e-5 * 1/1
    assert _lr(2, 10) == pytest.approx(5e-5)  # first cosine round
    assert _lr(10, 10) == pytest.approx(1e-5)  # last round reaches lr_min
    # rounds 2..10 are 9 cosine rounds; round 6 is progress 4/8 = 0.5 -> cos = 0
    assert _lr(6, 10) == pytest.approx(1e-5 + 0.5 * 4e-5 * 1.0)
    # round 4: progress 2/8 = 0.25 -> 1e-5 + 2e-5 * (1 + sqrt(2)/2)
    assert _lr(4, 10) == pytest.approx(1e-5 + 2e-5 * (1 + math.sqrt(2) / 2), rel=1e-12)
    assert _lr(4, 10) == pytest.approx(4.414213562373095e-05, rel=1e-12)


def test_twenty_rounds_with_two_warmup_rounds():
    assert warmup_rounds(20, 0.1, True) == 2
    assert _lr(1, 20) == pytest.approx(2.5e-5)
    assert _lr(2, 20) == pytest.approx(5e-5)
    assert _lr(3, 20) == pytest.approx(5e-5)  # cosine starts at lr
    # rounds 3..20: 18 rounds, progress (r - 3) / 17; round 20 -> lr_min
    assert _lr(20, 20) == pytest.approx(1e-5)
    p = (11 - 3) / 17
    assert _lr(11, 20) == pytest.approx(1e-5 + 2e-5 * (1 + math.cos(math.pi * p)), rel=1e-12)


@pytest.mark.parametrize("kwargs", [{"use_warmup": False}, {"ratio": 0.0}])
def test_without_warmup_cosine_from_round_one(kwargs):
    assert _lr(1, 10, **kwargs) == pytest.approx(5e-5)
    assert _lr(10, 10, **kwargs) == pytest.approx(1e-5)
    # progress (4 - 1) / 9 = 1/3 -> cos(pi/3) = 0.5 -> 1e-5 + 2e-5 * 1.5
    assert _lr(4, 10, **kwargs) == pytest.approx(4e-5, rel=1e-12)
    # progress 2/9
    expected = 1e-5 + 2e-5 * (1 + math.cos(math.pi * 2 / 9))
    assert _lr(3, 10, **kwargs) == pytest.approx(expected, rel=1e-12)


def test_non_integer_warmup_rounds_up():
    # 0.1 * 15 = 1.5 warmup rounds -> 2
    assert warmup_rounds(15, 0.1, True) == 2
    assert _lr(1, 15) == pytest.approx(2.5e-5)


def test_decay_is_monotone_after_warmup_and_bounded():
    values = [_lr(r, 50) for r in range(1, 51)]
    w = warmup_rounds(50, 0.1, True)
    assert w == 5
    assert values[:w] == pytest.approx([LR * r / w for r in range(1, w + 1)])
    decay = values[w:]
    assert all(a >= b for a, b in itertools.pairwise(decay))
    assert all(LR_MIN - 1e-18 <= v <= LR + 1e-18 for v in values)


def test_single_round_and_single_decay_round_use_lr():
    assert lr_for_round(1, 1, LR, LR_MIN, 0.0, True) == LR
    # 2 rounds, ratio 0.5: one warmup round, one decay round
    assert lr_for_round(2, 2, LR, LR_MIN, 0.5, True) == LR


def test_rounds_are_one_based():
    with pytest.raises(ValueError):
        lr_for_round(0, 10, LR, LR_MIN, 0.1, True)


def test_warmup_rounds_exact_product_is_not_rounded_up():
    assert warmup_rounds(100, 0.07, True) == 7
    assert _lr(7, 100, ratio=0.07) == pytest.approx(LR)
