"""Tests for the non-IID Dirichlet client split (SPEC §2)."""

from __future__ import annotations

import logging
from collections import Counter

import pytest

from spearfl.federation.partition import bucket_labels, dirichlet_partition, partition_summary

LETTERS = ["A", "B", "C", "D"]


def make_labels(n: int, classes: list[str] = LETTERS) -> list[str]:
    """A deterministic, roughly balanced label list."""
    return [classes[(i * 7 + i // 3) % len(classes)] for i in range(n)]


def flat(parts: list[list[int]]) -> list[int]:
    return [i for p in parts for i in p]


def test_same_seed_same_split_different_seed_different() -> None:
    labels = make_labels(400)
    a = dirichlet_partition(labels, num_clients=10, alpha=0.5, seed=3)
    b = dirichlet_partition(labels, num_clients=10, alpha=0.5, seed=3)
    c = dirichlet_partition(labels, num_clients=10, alpha=0.5, seed=4)
    assert a == b
    assert a != c


def test_every_index_assigned_exactly_once_and_sorted() -> None:
    labels = make_labels(523)
    parts = dirichlet_partition(labels, num_clients=7, alpha=1.0, seed=0)
    assert len(parts) == 7
    assert sorted(flat(parts)) == list(range(523))
    assert all(p == sorted(p) for p in parts)


@pytest.mark.parametrize("alpha", [0.1, 0.5, 10.0])
def test_min_size_respected(alpha: float) -> None:
    labels = make_labels(600)
    parts = dirichlet_partition(labels, num_clients=12, alpha=alpha, seed=1, min_size=10)
    assert min(len(p) for p in parts) >= 10
    assert sorted(flat(parts)) == list(range(600))


def test_cap_respected_and_is_subset_of_uncapped_split() -> None:
    labels = make_labels(800)
    full = dirichlet_partition(labels, num_clients=5, alpha=0.3, seed=9)
    capped = dirichlet_partition(labels, num_clients=5, alpha=0.3, seed=9, max_per_client=40)
    assert max(len(p) for p in full) > 40  # the cap actually bites
    for f, c in zip(full, capped, strict=True):
        assert len(c) == min(40, len(f))
        assert set(c) <= set(f)
        assert c == sorted(c)
    # capping is itself deterministic
    again = dirichlet_partition(labels, num_clients=5, alpha=0.3, seed=9, max_per_client=40)
    assert capped == again


def test_too_few_examples_relaxes_and_terminates(caplog: pytest.LogCaptureFixture) -> None:
    labels = make_labels(25)
    with caplog.at_level(logging.WARNING, logger="spearfl.federation.partition"):
        parts = dirichlet_partition(labels, num_clients=10, alpha=1.0, seed=0, min_size=10)
    assert sorted(flat(parts)) == list(range(25))
    # 25 // 10 = 2 is the largest feasible minimum, so that is where the target starts
    assert any("from 10 to 2" in r.getMessage() for r in caplog.records)


def test_fewer_examples_than_clients() -> None:
    parts = dirichlet_partition(make_labels(5), num_clients=8, alpha=0.5, seed=2)
    assert len(parts) == 8
    assert sorted(flat(parts)) == list(range(5))


def test_empty_labels() -> None:
    assert dirichlet_partition([], num_clients=3, alpha=1.0, seed=0) == [[], [], []]


def test_extreme_alpha_relaxes_with_warning(caplog: pytest.LogCaptureFixture) -> None:
    # Two labels, 20 clients, alpha tiny: almost every draw gives each label to one client,
    # so a minimum of 10 is hopeless and has to be relaxed to terminate.
    labels = make_labels(400, ["yes", "no"])
    with caplog.at_level(logging.WARNING, logger="spearfl.federation.partition"):
        parts = dirichlet_partition(
            labels, num_clients=20, alpha=0.01, seed=0, min_size=10, max_attempts=5
        )
    assert sorted(flat(parts)) == list(range(400))
    assert any("relaxing" in r.getMessage() for r in caplog.records)


def _mean_max_share(alpha: float, seeds: range) -> float:
    labels = make_labels(1000)
    shares = []
    for seed in seeds:
        for part in dirichlet_partition(labels, num_clients=10, alpha=alpha, seed=seed):
            counts = Counter(labels[i] for i in part)
            shares.append(max(counts.values()) / len(part))
    return sum(shares) / len(shares)


def test_lower_alpha_is_more_heterogeneous() -> None:
    skewed = _mean_max_share(0.1, range(5))
    uniform = _mean_max_share(100.0, range(5))
    # 4 balanced labels: a near-IID client has max share close to 0.25
    assert uniform < 0.35
    assert skewed > 0.6
    assert skewed > uniform + 0.3


def test_bucket_labels_round_robin_over_sorted_labels() -> None:
    labels = ["E", "A", "C", "B", "D", "A"]
    # sorted distinct A,B,C,D,E -> ranks 0..4 -> classes 0,1,0,1,0
    assert bucket_labels(labels, 2) == [0, 0, 0, 1, 1, 0]
    assert bucket_labels(labels, None) == [4, 0, 2, 1, 3, 0]
    assert bucket_labels(labels, 10) == bucket_labels(labels, None)


def test_num_classes_bucketing_changes_draw_but_keeps_invariants() -> None:
    labels = make_labels(300, ["A", "B", "C", "D", "E", "F"])
    per_label = dirichlet_partition(labels, num_clients=6, alpha=0.5, seed=0)
    bucketed = dirichlet_partition(labels, num_clients=6, alpha=0.5, seed=0, num_classes=2)
    same = dirichlet_partition(labels, num_clients=6, alpha=0.5, seed=0, num_classes=6)
    assert same == per_label
    assert bucketed != per_label
    assert sorted(flat(bucketed)) == list(range(300))
    assert min(len(p) for p in bucketed) >= 10


@pytest.mark.parametrize(
    "kwargs",
    [
        {"num_clients": 0, "alpha": 1.0},
        {"num_clients": 2, "alpha": 0.0},
        {"num_clients": 2, "alpha": float("nan")},
        {"num_clients": 2, "alpha": 1.0, "max_per_client": 0},
        {"num_clients": 2, "alpha": 1.0, "min_size": -1},
        {"num_clients": 2, "alpha": 1.0, "num_classes": 0},
    ],
)
def test_bad_arguments_raise(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        dirichlet_partition(make_labels(50), seed=0, **kwargs)


def test_partition_summary() -> None:
    labels = ["A", "B", "A", "C", "B"]
    summary = partition_summary([[0, 2, 3], [1, 4]], labels)
    assert summary["num_clients"] == 2
    assert summary["sizes"] == [3, 2]
    assert summary["total"] == 5
    assert summary["min_size"] == 2
    assert summary["max_size"] == 3
    assert summary["mean_size"] == 2.5
    assert summary["label_counts"] == [{"A": 2, "C": 1}, {"B": 2}]
