"""The paired bootstrap over seeds and questions, on hand-made 0/1 records with known answers.

Expected widths come from the binomial variance of a resampled mean: resampling n questions
with replacement gives an accuracy with standard deviation sqrt(p(1-p)/n), and a paired
difference of two runs one with sqrt((p_a + p_b - (p_a - p_b)^2) / n), where p_a and p_b are the
shares of questions only one of them got right.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import pytest

from spearfl.reporting.records import RecordsError, RunRecords
from spearfl.reporting.statistics import paired_bootstrap

Z95 = 1.959964


def _run(n: int, *right_per_round: Iterable[int], prefix: str = "q") -> RunRecords:
    """A run on ``n`` questions; one set of right question indices per evaluated round."""
    rows = np.zeros((len(right_per_round), n))
    for i, right in enumerate(right_per_round):
        rows[i, list(right)] = 1.0
    uids = tuple(f"{prefix}{j}" for j in range(n))
    return RunRecords(tuple(range(len(right_per_round))), uids, rows)


def _width(interval) -> float:
    return interval.high - interval.low


def test_difference_excludes_zero_when_one_run_adds_right_answers():
    # Per seed: the baseline gets questions 0-99 of 200 right, spear those and 100-129 too.
    groups = {
        "spear": {s: _run(200, range(130), prefix=f"s{s}-") for s in (42, 43, 44)},
        "grpo": {s: _run(200, range(100), prefix=f"s{s}-") for s in (42, 43, 44)},
    }
    boot = paired_bootstrap(groups, draws=4000, seed=1)
    diff = boot.difference("spear", "grpo")
    assert diff.estimate == pytest.approx(0.15)
    # 30 of 200 questions differ: a draw without any of them has probability (170/200)^200.
    assert diff.p_improvement == 1.0
    # questions are resampled within each of 3 seeds: 600 question draws in all
    sd = math.sqrt(0.15 * 0.85 / 600)
    assert diff.low == pytest.approx(0.15 - Z95 * sd, abs=0.006)
    assert diff.high == pytest.approx(0.15 + Z95 * sd, abs=0.006)
    assert diff.low > 0
    assert boot.interval("spear").estimate == pytest.approx(0.65)
    assert boot.interval("grpo").estimate == pytest.approx(0.5)


def test_interval_contains_zero_when_the_runs_trade_right_answers():
    # Both right on 0-89; only A on 90-99, only B on 100-109: the same accuracy, 0.5.
    groups = {
        "a": {42: _run(200, [*range(90), *range(90, 100)])},
        "b": {42: _run(200, [*range(90), *range(100, 110)])},
    }
    boot = paired_bootstrap(groups, draws=4000, seed=2)
    diff = boot.difference("a", "b")
    assert diff.estimate == 0.0
    sd = math.sqrt((0.05 + 0.05) / 200)
    assert diff.low == pytest.approx(-Z95 * sd, abs=0.006)
    assert diff.high == pytest.approx(Z95 * sd, abs=0.006)
    assert diff.low < 0 < diff.high
    # symmetric: each wins in a bit under half of the draws (ties count for neither)
    back = boot.difference("b", "a")
    assert 0.40 < diff.p_improvement < 0.5 and 0.40 < back.p_improvement < 0.5
    assert diff.p_improvement == pytest.approx(back.p_improvement, abs=0.03)


def test_one_seed_resamples_questions_only():
    boot = paired_bootstrap({"a": {7: _run(400, range(200))}}, draws=4000, seed=3)
    interval = boot.interval("a")
    assert boot.seeds == (7,)
    assert interval.estimate == 0.5
    half = Z95 * math.sqrt(0.25 / 400)
    assert interval.low == pytest.approx(0.5 - half, abs=0.006)
    assert interval.high == pytest.approx(0.5 + half, abs=0.006)


def test_identical_runs_and_a_single_question_are_degenerate():
    same = {"a": {1: _run(50, range(20))}, "b": {1: _run(50, range(20))}}
    diff = paired_bootstrap(same, draws=500).difference("a", "b")
    assert (diff.estimate, diff.low, diff.high, diff.p_improvement) == (0.0, 0.0, 0.0, 0.0)
    single = paired_bootstrap({"a": {1: _run(1, [0]), 2: _run(1, [0])}}, draws=500)
    assert single.interval("a") == single.interval("a", "best")
    assert (single.interval("a").low, single.interval("a").high) == (1.0, 1.0)


def test_seeds_are_resampled():
    # Three seeds at 0.2, 0.5 and 0.8: the mean of three drawn seeds spans most of that range
    # (all three draws are the 0.2 seed in 1/27 = 3.7% of draws, above the 2.5% tail).
    spread = {"a": {s: _run(400, range(k)) for s, k in ((1, 80), (2, 200), (3, 320))}}
    wide = paired_bootstrap(spread, draws=4000, seed=4).interval("a")
    assert wide.estimate == pytest.approx(0.5)
    assert wide.low < 0.25 and wide.high > 0.75
    steady = {"a": {s: _run(400, range(200)) for s in (1, 2, 3)}}
    narrow = paired_bootstrap(steady, draws=4000, seed=4).interval("a")
    assert _width(narrow) < 0.1


def test_pairing_narrows_the_difference_of_correlated_runs():
    # One seed: both right on 0-99 of 200, A also on 100-109.
    groups = {"a": {1: _run(200, range(110))}, "b": {1: _run(200, range(100))}}
    boot = paired_bootstrap(groups, draws=4000, seed=5)
    paired = _width(boot.difference("a", "b"))
    assert paired == pytest.approx(2 * Z95 * math.sqrt(0.05 * 0.95 / 200), abs=0.01)
    # Resampling the two runs' questions independently would add their variances.
    unpaired = 2 * Z95 * math.sqrt((0.55 * 0.45 + 0.5 * 0.5) / 200)
    assert paired < 0.4 * unpaired
    # The same across seeds that move both runs together (0.2 to 0.8 accuracy).
    moving = {
        "a": {
            s: _run(400, range(k + 20), prefix=f"{s}-") for s, k in ((1, 80), (2, 200), (3, 300))
        },
        "b": {s: _run(400, range(k), prefix=f"{s}-") for s, k in ((1, 80), (2, 200), (3, 300))},
    }
    boot = paired_bootstrap(moving, draws=4000, seed=5)
    diff = boot.difference("a", "b")
    assert diff.estimate == pytest.approx(0.05) and diff.p_improvement == 1.0
    marginal = math.hypot(_width(boot.interval("a")), _width(boot.interval("b")))
    assert _width(diff) < 0.15 * marginal


def test_final_and_best_use_the_last_and_the_best_round():
    # accuracy per round: 0.3, 0.7, 0.6 (seed 1) and 0.3, 0.5, 0.6 (seed 2)
    groups = {
        "a": {
            1: _run(10, range(3), range(7), range(6), prefix="x"),
            2: _run(10, range(3), range(5), range(6), prefix="y"),
        }
    }
    boot = paired_bootstrap(groups, draws=2000, seed=6)
    assert boot.interval("a", "final").estimate == pytest.approx(0.6)
    best = boot.interval("a", "best")
    assert best.estimate == pytest.approx((0.7 + 0.6) / 2)  # round 1, then round 2 (a tie)
    assert best.low < best.estimate < best.high
    rounds = boot.per_round("a")
    assert [r for r, _ in rounds] == [0, 1, 2]
    assert [i.estimate for _, i in rounds] == pytest.approx([0.3, 0.6, 0.6])


def test_seeded_and_deterministic():
    groups = {"a": {1: _run(100, range(60))}, "b": {1: _run(100, range(50))}}
    first = paired_bootstrap(groups, draws=1500, seed=11).difference("a", "b")
    again = paired_bootstrap(groups, draws=1500, seed=11).difference("a", "b")
    other = paired_bootstrap(groups, draws=1500, seed=12).difference("a", "b")
    assert first == again
    assert first != other and first.estimate == other.estimate


def test_runs_that_cannot_be_paired_are_refused():
    with pytest.raises(ValueError, match=r"group 'b' has seeds \[1, 3\].*same seeds"):
        paired_bootstrap(
            {"a": {1: _run(5, [0]), 2: _run(5, [0])}, "b": {1: _run(5, [0]), 3: _run(5, [0])}}
        )
    with pytest.raises(ValueError, match="seed 1: 'b' and 'a' were evaluated on different"):
        paired_bootstrap({"a": {1: _run(5, [0])}, "b": {1: _run(5, [0], prefix="z")}})
    with pytest.raises(RecordsError, match=r"records of shape \(1, 2\), expected \(1, 3\)"):
        RunRecords((0,), ("a", "b", "c"), np.zeros((1, 2)))
