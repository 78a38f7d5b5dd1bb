"""Learning curves of a run as a PNG: eval accuracy over rounds, and wins/losses per round.

Built on ``matplotlib.figure.Figure`` with the Agg canvas rather than ``pyplot``, so plotting
needs no display, does not touch the global backend, and leaks no open figures in long runs.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from spearfl.reporting.history import EXTRA_EVAL_METRICS, client_updates

__all__ = ["plot_curves"]

_LABELS = {"accuracy": "accuracy", "option_accuracy": "option accuracy", "valid_rate": "valid rate"}


def _eval_series(history: Sequence[Mapping[str, Any]], key: str) -> tuple[list[int], list[float]]:
    """Rounds and values of one eval metric, skipping rounds where it is absent."""
    rounds: list[int] = []
    values: list[float] = []
    for entry in history:
        ev = entry.get("eval")
        if isinstance(ev, Mapping) and isinstance(ev.get(key), (int, float)):
            rounds.append(int(entry["round"]))
            values.append(float(ev[key]))
    return rounds, values


def _outcomes(history: Sequence[Mapping[str, Any]]) -> tuple[list[int], list[int], list[int]]:
    """Per training round: round number, wins and losses summed over that round's clients."""
    rounds: list[int] = []
    wins: list[int] = []
    losses: list[int] = []
    for entry in history:
        updates = client_updates(entry)
        if not updates:
            continue
        rounds.append(int(entry["round"]))
        wins.append(sum(int(m.get("wins") or 0) for m in updates))
        losses.append(sum(int(m.get("losses") or 0) for m in updates))
    return rounds, wins, losses


def plot_curves(
    history: Sequence[Mapping[str, Any]],
    path: str | os.PathLike[str],
    title: str = "SPEAR federated fine-tuning",
) -> Path:
    """Save a two-panel PNG of ``history`` to ``path`` and return the path.

    Panels with nothing to show yet (e.g. right after round 0) say so instead of being blank,
    so the file can be regenerated after every round.
    """
    figure = Figure(figsize=(11, 4.5), layout="constrained")
    FigureCanvasAgg(figure)
    acc_axes, out_axes = figure.subplots(1, 2)
    figure.suptitle(title)

    plotted = False
    for key, style in zip(("accuracy", *EXTRA_EVAL_METRICS), ("o-", "s--", "^:"), strict=True):
        rounds, values = _eval_series(history, key)
        if rounds:
            acc_axes.plot(rounds, values, style, label=_LABELS[key])
            plotted = True
    acc_axes.set_title("Evaluation")
    acc_axes.set_xlabel("round")
    acc_axes.set_ylabel("score")
    acc_axes.set_ylim(0.0, 1.05)
    acc_axes.grid(alpha=0.3)
    for axes in (acc_axes, out_axes):  # rounds are whole numbers; avoid ticks like 2.5
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    if plotted:
        acc_axes.legend(loc="best")
    else:
        _note(acc_axes, "no evaluations yet")

    rounds, wins, losses = _outcomes(history)
    width = 0.4
    out_axes.set_title("Rollout outcomes (all clients)")
    out_axes.set_xlabel("round")
    out_axes.set_ylabel("count")
    out_axes.grid(axis="y", alpha=0.3)
    if rounds:
        left = [r - width / 2 for r in rounds]
        right = [r + width / 2 for r in rounds]
        out_axes.bar(left, wins, width, label="wins", color="tab:green")
        out_axes.bar(right, losses, width, label="losses", color="tab:red")
        out_axes.legend(loc="best")
    else:
        _note(out_axes, "no training rounds yet")

    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(target, format="png", dpi=110)
    return target


def _note(axes: Any, text: str) -> None:
    axes.text(0.5, 0.5, text, ha="center", va="center", transform=axes.transAxes, color="gray")
