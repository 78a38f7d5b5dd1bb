"""The report of a sweep (``spearfl sweep``): accuracy against the swept values, with intervals.

Every point of the grid ran once per seed; the points of one seed share the partition, client
draws and eval questions, so the statistics are those of the multi-seed comparison
(:mod:`spearfl.reporting.statistics`): paired by seed and question. Each point is also compared
with the first point of the grid (the reference).

Writes ``sweep.md`` (one row per point) and ``sweep.png`` (final accuracy against the first
swept key's values, one line per combination of the other keys, with interval bars).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from spearfl.reporting.records import RunRecords, read_records
from spearfl.reporting.seeds import fmt_difference, fmt_interval, method_note
from spearfl.reporting.statistics import Bootstrap, paired_bootstrap

__all__ = ["SWEEP_MD", "SWEEP_PNG", "SweepPoint", "plot_sweep", "sweep_markdown", "write_sweep"]

SWEEP_MD = "sweep.md"
SWEEP_PNG = "sweep.png"


@dataclass(frozen=True)
class SweepPoint:
    """One combination of grid values, and its run directory for every seed."""

    settings: tuple[tuple[str, str], ...]
    """(dotted key, value as written on the command line), in the order of the grid."""
    runs: Mapping[int, Path]

    @property
    def label(self) -> str:
        return ",".join(f"{key}={value}" for key, value in self.settings)


def _as_number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def sweep_markdown(
    boot: Bootstrap,
    points: Sequence[SweepPoint],
    records: Mapping[str, Mapping[int, RunRecords]],
    note: str = "",
) -> str:
    """The whole ``sweep.md``."""
    keys = [key for key, _ in points[0].settings]
    seeds = list(boot.seeds)
    reference = points[0].label
    lines = [f"# Sweep over {', '.join(keys)}; seeds {', '.join(map(str, seeds))}", ""]
    if note:
        lines += [note, ""]
    header = [*keys, "final acc [CI]", "best acc [CI]", "final per seed"]
    header += [f"final diff vs {reference} [CI]", "P(improvement)"]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join(["---"] * len(keys) + ["---:"] * (len(header) - len(keys))) + "|")
    for point in points:
        name = point.label
        per_seed = ", ".join(f"{records[name][s].final:.3f}" for s in seeds)
        if name == reference:
            versus = ["(reference)", "-"]
        else:
            diff = boot.difference(name, reference)
            versus = [fmt_difference(diff), f"{diff.p_improvement:.3f}"]
        cells = [value for _, value in point.settings]
        cells += [fmt_interval(boot.interval(name)), fmt_interval(boot.interval(name, "best"))]
        lines.append("| " + " | ".join([*cells, per_seed, *versus]) + " |")
    lines += ["", method_note(boot), ""]
    return "\n".join(lines)


def plot_sweep(boot: Bootstrap, points: Sequence[SweepPoint], path: str | os.PathLike[str]) -> Path:
    """Final accuracy against the first key's values; a line per setting of the other keys."""
    figure = Figure(figsize=(7, 4.5), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots()
    first_key = points[0].settings[0][0]
    texts = list(dict.fromkeys(p.settings[0][1] for p in points))
    numbers = [_as_number(t) for t in texts]
    numeric = all(n is not None for n in numbers)
    position = {t: (n if numeric else i) for i, (t, n) in enumerate(zip(texts, numbers))}
    lines: dict[str, list[SweepPoint]] = {}
    for point in points:
        rest = ",".join(f"{k}={v}" for k, v in point.settings[1:])
        lines.setdefault(rest, []).append(point)
    for rest, members in lines.items():
        xs = [position[p.settings[0][1]] for p in members]
        found = [boot.interval(p.label) for p in members]
        ys = [i.estimate for i in found]
        below = [i.estimate - i.low for i in found]
        above = [i.high - i.estimate for i in found]
        axes.errorbar(xs, ys, yerr=[below, above], fmt="o-", capsize=4, label=rest or None)
    if numeric:
        values = [n for n in numbers if n is not None]
        if min(values) > 0 and max(values) / min(values) >= 10:
            axes.set_xscale("log")
        axes.set_xticks(values, texts)
    else:
        axes.set_xticks(range(len(texts)), texts)
    pct = f"{boot.level:.0%}"
    figure.suptitle(f"Final accuracy, mean over {len(boot.seeds)} seed(s), {pct} intervals")
    axes.set_xlabel(first_key)
    axes.set_ylabel("eval accuracy")
    axes.set_ylim(0.0, 1.05)
    axes.grid(alpha=0.3)
    if any(rest for rest in lines):
        axes.legend(loc="best")
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(target, format="png", dpi=110)
    return target


def write_sweep(
    points: Sequence[SweepPoint],
    out_dir: str | os.PathLike[str],
    note: str = "",
    draws: int = 10_000,
    bootstrap_seed: int = 0,
) -> tuple[Path, Path]:
    """Read every point's runs and write ``sweep.md`` and ``sweep.png`` into ``out_dir``."""
    if not points:
        raise ValueError("a sweep report needs at least one point")
    records = {
        p.label: {seed: read_records(run_dir) for seed, run_dir in p.runs.items()} for p in points
    }
    boot = paired_bootstrap(records, draws=draws, seed=bootstrap_seed)
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    md = folder / SWEEP_MD
    md.write_text(sweep_markdown(boot, points, records, note), encoding="utf-8")
    return md, plot_sweep(boot, points, folder / SWEEP_PNG)
