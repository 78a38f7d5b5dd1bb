"""Confidence intervals for accuracies over seeds and questions: a paired, two-level bootstrap.

A run's accuracy varies with the seed (partition, client draws, sampling, adapter init) and
with which questions happen to be in the eval set. Each bootstrap draw therefore resamples both,
in two levels: it draws as many seeds as there are, with replacement; then, within every drawn
seed, as many of that seed's eval questions as there are, with replacement. The accuracy of a
group (an algorithm, a sweep cell) in that draw is the mean over the drawn seeds of its accuracy
on the drawn questions.

Every group of one draw gets the *same* drawn seeds and the *same* drawn questions: the
bootstrap is paired. Two algorithms usually get the same questions right and wrong (easy
questions are easy for both), so a difference computed on identical questions cancels that
shared part; an unpaired interval would count it twice and come out much wider.

Reported per group: the observed mean over seeds of the final and of the best accuracy, each with
a percentile interval; per pair: the mean paired difference, its interval, and the probability
of improvement (the share of draws in which the difference is above 0; a tie is no improvement).
A run's best round is picked once, on its observed accuracies, and the draws resample the
accuracy *at that round*: taking the maximum within every draw would push the whole interval
above the observed value. Picking the best round flatters it either way, which is why the final
accuracy is the headline. Seeded: the same records and seed give the same numbers.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np

from spearfl.reporting.records import RunRecords

__all__ = ["Bootstrap", "Difference", "Interval", "paired_bootstrap"]

Metric = Literal["final", "best"]
_CHUNK = 1000
"""Draws computed at a time: bounds the memory of the resampling weights."""


@dataclass(frozen=True)
class Interval:
    """An observed value and the bootstrap interval around it."""

    estimate: float
    low: float
    high: float


@dataclass(frozen=True)
class Difference(Interval):
    """``estimate`` = mean paired difference; ``p_improvement`` = share of draws above 0."""

    p_improvement: float


@dataclass(frozen=True)
class Bootstrap:
    """The draws behind every interval, per group, aligned draw by draw across groups."""

    seeds: tuple[int, ...]
    level: float
    draws: int
    observed: Mapping[str, Mapping[Metric, float]]
    sampled: Mapping[str, Mapping[Metric, np.ndarray]]
    """Per group and metric: one mean-over-seeds accuracy per draw."""
    round_numbers: Mapping[str, tuple[int, ...]]
    """Per group: the rounds every seed's run evaluated."""
    round_observed: Mapping[str, np.ndarray]
    round_sampled: Mapping[str, np.ndarray]
    """Per group: draws x rounds of mean-over-seeds accuracy."""

    def _bounds(self, values: np.ndarray) -> tuple[float, float]:
        tail = (1.0 - self.level) / 2.0
        low, high = np.quantile(values, [tail, 1.0 - tail])
        return float(low), float(high)

    def interval(self, group: str, metric: Metric = "final") -> Interval:
        """Mean over seeds of the group's final (or best) accuracy, with its interval."""
        return Interval(self.observed[group][metric], *self._bounds(self.sampled[group][metric]))

    def per_round(self, group: str) -> list[tuple[int, Interval]]:
        """Mean over seeds of the accuracy at each round every seed evaluated, with bands."""
        sampled = self.round_sampled[group]
        return [
            (r, Interval(float(self.round_observed[group][i]), *self._bounds(sampled[:, i])))
            for i, r in enumerate(self.round_numbers[group])
        ]

    def difference(self, group: str, baseline: str, metric: Metric = "final") -> Difference:
        """``group`` minus ``baseline``, computed draw by draw on the same seeds and questions."""
        diff = self.sampled[group][metric] - self.sampled[baseline][metric]
        estimate = self.observed[group][metric] - self.observed[baseline][metric]
        return Difference(estimate, *self._bounds(diff), p_improvement=float(np.mean(diff > 0)))


def _check_alignment(groups: Mapping[str, Mapping[int, RunRecords]]) -> tuple[int, ...]:
    """The seeds every group has, after checking each seed's runs share their questions."""
    if not groups:
        raise ValueError("no groups to compare")
    names = list(groups)
    seeds = tuple(sorted(groups[names[0]]))
    if not seeds:
        raise ValueError(f"group {names[0]!r} has no runs")
    for name in names[1:]:
        if tuple(sorted(groups[name])) != seeds:
            raise ValueError(
                f"group {name!r} has seeds {sorted(groups[name])}, {names[0]!r} has "
                f"{list(seeds)}: paired statistics need the same seeds everywhere"
            )
    for seed in seeds:
        first = groups[names[0]][seed].uids
        for name in names[1:]:
            if groups[name][seed].uids != first:
                raise ValueError(
                    f"seed {seed}: {name!r} and {names[0]!r} were evaluated on different "
                    "questions, so they cannot be paired question by question"
                )
    return seeds


def _question_weights(rng: np.random.Generator, rows: int, n: int) -> np.ndarray:
    """Per row, how often each of ``n`` questions was drawn in ``n`` draws, divided by ``n``."""
    picks = rng.integers(0, n, size=(rows, n)) + n * np.arange(rows)[:, None]
    return np.bincount(picks.ravel(), minlength=rows * n).reshape(rows, n) / n


def paired_bootstrap(
    groups: Mapping[str, Mapping[int, RunRecords]],
    *,
    draws: int = 10_000,
    seed: int = 0,
    level: float = 0.95,
) -> Bootstrap:
    """Resample seeds, then questions within each drawn seed, identically for every group.

    ``groups[name][seed]`` is the records of that group's run with that seed; all groups need
    the same seeds, and the runs of one seed the same questions.
    """
    if draws < 1:
        raise ValueError(f"draws must be >= 1, got {draws}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    seeds = _check_alignment(groups)
    common = {
        name: tuple(sorted(set.intersection(*(set(runs[s].rounds) for s in seeds))))
        for name, runs in groups.items()
    }
    final, best, by_round = _resampled(groups, seeds, common, draws, np.random.default_rng(seed))
    observed, round_observed = _observed(groups, seeds, common)
    return Bootstrap(
        seeds=seeds,
        level=level,
        draws=draws,
        observed=observed,
        sampled={
            name: {"final": final[name].mean(axis=1), "best": best[name].mean(axis=1)}
            for name in groups
        },
        round_numbers=common,
        round_observed=round_observed,
        round_sampled={name: by_round[name].mean(axis=1) for name in groups},
    )


def _resampled(
    groups: Mapping[str, Mapping[int, RunRecords]],
    seeds: tuple[int, ...],
    common: Mapping[str, tuple[int, ...]],
    draws: int,
    rng: np.random.Generator,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Per group, the final and best accuracy ``[draws, seed slots]`` and the accuracy at
    each ``common`` round ``[draws, seed slots, rounds]`` of every bootstrap draw."""
    n_seeds = len(seeds)
    final = {name: np.empty((draws, n_seeds)) for name in groups}
    best = {name: np.empty((draws, n_seeds)) for name in groups}
    by_round = {name: np.empty((draws, n_seeds, len(common[name]))) for name in groups}
    for start in range(0, draws, _CHUNK):
        count = min(_CHUNK, draws - start)
        drawn = rng.integers(0, n_seeds, size=(count, n_seeds))  # the seed in each slot
        for index, s in enumerate(seeds):
            rows, slots = np.nonzero(drawn == index)
            if rows.size == 0:
                continue
            n_questions = len(next(iter(groups.values()))[s].uids)
            weights = _question_weights(rng, rows.size, n_questions)
            for name, runs in groups.items():
                run = runs[s]
                accuracy = weights @ run.correct.T  # (rows, evaluated rounds)
                final[name][start + rows, slots] = accuracy[:, -1]
                best[name][start + rows, slots] = accuracy[:, run.best_index]
                columns = [run.rounds.index(r) for r in common[name]]
                by_round[name][start + rows, slots] = accuracy[:, columns]
    return final, best, by_round


def _observed(
    groups: Mapping[str, Mapping[int, RunRecords]],
    seeds: tuple[int, ...],
    common: Mapping[str, tuple[int, ...]],
) -> tuple[dict[str, dict[Metric, float]], dict[str, np.ndarray]]:
    """Per group, the mean over seeds of the final and best accuracy and of the accuracy at
    each ``common`` round, as measured."""
    observed: dict[str, dict[Metric, float]] = {}
    round_observed: dict[str, np.ndarray] = {}
    for name, runs in groups.items():
        observed[name] = {
            "final": float(np.mean([runs[s].final for s in seeds])),
            "best": float(np.mean([runs[s].best for s in seeds])),
        }
        round_observed[name] = np.mean(
            [[runs[s].accuracy[runs[s].rounds.index(r)] for r in common[name]] for s in seeds],
            axis=0,
        )
    return observed, round_observed
