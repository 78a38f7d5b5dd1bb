"""Comparison of algorithms over several seeds, with paired confidence intervals.

Layout: ``DIR/seed-S/<algorithm>/`` holds the run of that algorithm with ``data.seed = S``; the
runs of one seed share their partition, client draws and eval questions. The report reads each
run's per-question records (:mod:`spearfl.reporting.records`) and bootstraps them
(:mod:`spearfl.reporting.statistics`).

Writes ``comparison.md`` (per algorithm: mean final and best accuracy with intervals, the
per-seed values and the mean cost; the algorithm being compared against each other one: mean
paired difference, interval, probability of improvement) and ``comparison.png`` (accuracy per
round, mean over seeds, with its band).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from spearfl.reporting.comparison import COMPARISON_MD, COMPARISON_PNG, load_run
from spearfl.reporting.records import RunRecords, read_records
from spearfl.reporting.statistics import Bootstrap, Difference, Interval, paired_bootstrap

__all__ = [
    "fmt_difference",
    "fmt_interval",
    "load_seed_records",
    "method_note",
    "plot_seed_comparison",
    "seed_comparison_markdown",
    "seed_overrides",
    "seed_run_dir",
    "write_seed_comparison",
]


def seed_run_dir(root: str | os.PathLike[str], seed: int, algorithm: str) -> Path:
    """Where the run of ``algorithm`` with ``data.seed = seed`` lives in a comparison folder."""
    return Path(root) / f"seed-{seed}" / algorithm


def seed_overrides(root: str | os.PathLike[str], seed: int, algorithm: str) -> list[str]:
    """The ``--set`` items that turn the comparison's config into that run's config."""
    return [
        f"algorithm.name={algorithm}",
        f"data.seed={seed}",
        f"output_dir={seed_run_dir(root, seed, algorithm)}",
    ]


def load_seed_records(
    root: str | os.PathLike[str], algorithms: Sequence[str], seeds: Sequence[int]
) -> dict[str, dict[int, RunRecords]]:
    """``{algorithm: {seed: records}}`` of every run in the comparison folder."""
    return {
        name: {seed: read_records(seed_run_dir(root, seed, name)) for seed in seeds}
        for name in algorithms
    }


def fmt_interval(interval: Interval) -> str:
    return f"{interval.estimate:.3f} [{interval.low:.3f}, {interval.high:.3f}]"


def fmt_difference(diff: Difference) -> str:
    return f"{diff.estimate:+.3f} [{diff.low:+.3f}, {diff.high:+.3f}]"


def method_note(boot: Bootstrap) -> str:
    """What the intervals are, in one paragraph (shared by the comparison and sweep reports)."""
    pct = f"{boot.level:.0%}"
    text = (
        f"Intervals: {pct} percentile intervals from {boot.draws:,} bootstrap draws. Each draw "
        f"resamples the seeds ({', '.join(map(str, boot.seeds))}) with replacement, then the eval "
        "questions within each drawn seed with replacement, and gives every run of a seed the "
        "same drawn questions, so differences are paired by seed and by question. Final: the "
        "last evaluated round; best: each run's best evaluated round (picked on the observed "
        "accuracies, so it flatters). P(improvement): the share of draws in which the "
        "difference is above 0."
    )
    if len(boot.seeds) == 1:
        text += (
            " With one seed the intervals cover the choice of questions only, not the variation"
            " from run to run."
        )
    return text


def _per_seed(runs: Mapping[int, RunRecords], seeds: Sequence[int], metric: str) -> str:
    return ", ".join(f"{getattr(runs[s], metric):.3f}" for s in seeds)


def seed_comparison_markdown(
    boot: Bootstrap,
    records: Mapping[str, Mapping[int, RunRecords]],
    target: str,
    tokens_per_round: Mapping[str, float | None] | None = None,
    note: str = "",
) -> str:
    """The whole multi-seed ``comparison.md``."""
    names = list(records)
    seeds = list(boot.seeds)
    tokens = tokens_per_round or {}
    lines = [f"# Algorithm comparison over seeds {', '.join(map(str, seeds))}", ""]
    if note:
        lines += [note, ""]
    header = ["algorithm", "final acc [CI]", "best acc [CI]", "final per seed", "best per seed"]
    header.append("tokens/round")
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|")
    for name in names:
        cost = tokens.get(name)
        cells = [
            name,
            fmt_interval(boot.interval(name, "final")),
            fmt_interval(boot.interval(name, "best")),
            _per_seed(records[name], seeds, "final"),
            _per_seed(records[name], seeds, "best"),
            "-" if cost is None else f"{cost:,.0f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    baselines = [n for n in names if n != target]
    if baselines:
        lines += [
            "",
            f"{target} against each baseline ({target} minus baseline, paired):",
            "",
            "| baseline | final diff [CI] | P(improvement) | best diff [CI] | P(improvement) |",
            "|---|---:|---:|---:|---:|",
        ]
        for other in baselines:
            final, best = boot.difference(target, other), boot.difference(target, other, "best")
            lines.append(
                f"| {other} | {fmt_difference(final)} | {final.p_improvement:.3f} "
                f"| {fmt_difference(best)} | {best.p_improvement:.3f} |"
            )
    lines += ["", method_note(boot), ""]
    return "\n".join(lines)


def plot_seed_comparison(
    boot: Bootstrap, names: Sequence[str], path: str | os.PathLike[str]
) -> Path:
    """Accuracy per round, mean over seeds, with the bootstrap band of that mean."""
    figure = Figure(figsize=(7, 4.5), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots()
    pct = f"{boot.level:.0%}"
    figure.suptitle(f"Accuracy per round: mean over {len(boot.seeds)} seed(s), {pct} bands")
    for name in names:
        points = boot.per_round(name)
        if not points:
            continue
        rounds = [r for r, _ in points]
        (line,) = axes.plot(rounds, [i.estimate for _, i in points], "o-", label=name)
        low, high = [i.low for _, i in points], [i.high for _, i in points]
        axes.fill_between(rounds, low, high, color=line.get_color(), alpha=0.2, linewidth=0)
    axes.set_xlabel("round")
    axes.set_ylabel("eval accuracy")
    axes.set_ylim(0.0, 1.05)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.grid(alpha=0.3)
    if axes.get_lines():
        axes.legend(loc="best")
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(target, format="png", dpi=110)
    return target


def write_seed_comparison(
    root: str | os.PathLike[str],
    algorithms: Sequence[str],
    seeds: Sequence[int],
    target: str = "spear",
    note: str = "",
    draws: int = 10_000,
    bootstrap_seed: int = 0,
) -> tuple[Path, Path]:
    """Read ``root/seed-S/<algorithm>/`` for every seed and algorithm; write the report there.

    ``target`` is the algorithm compared against each of the others."""
    if target not in algorithms:
        raise ValueError(
            f"the algorithm to compare, {target!r}, is not among {', '.join(algorithms)}"
        )
    records = load_seed_records(root, algorithms, seeds)
    boot = paired_bootstrap(records, draws=draws, seed=bootstrap_seed)
    tokens: dict[str, float | None] = {}
    for name in algorithms:
        per_seed = [load_run(name, seed_run_dir(root, s, name)).tokens_per_round for s in seeds]
        known = [t for t in per_seed if t is not None]
        tokens[name] = sum(known) / len(known) if known else None
    folder = Path(root)
    folder.mkdir(parents=True, exist_ok=True)
    md = folder / COMPARISON_MD
    md.write_text(seed_comparison_markdown(boot, records, target, tokens, note), encoding="utf-8")
    return md, plot_seed_comparison(boot, algorithms, folder / COMPARISON_PNG)
