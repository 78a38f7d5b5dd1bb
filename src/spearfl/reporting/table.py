"""The per-round rows the CLI prints while a run progresses.

``format_round_row`` turns one history entry into display strings, one per column of
``COLUMNS`` (plain strings, so the formatting is testable and reusable, e.g. for a plain-text
log).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from spearfl.reporting.history import client_updates

__all__ = ["COLUMNS", "MISSING", "format_round_row"]

MISSING = "-"
COLUMNS: tuple[str, ...] = (
    "round",
    "clients",
    "wins",
    "losses",
    "y0 acc",
    "tokens",
    "rollout s",
    "train s",
    "eval acc",
    "option acc",
    "valid",
)
"""Column headers, which are also the keys of ``format_round_row``'s dict."""


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return value if math.isfinite(value) else None


def _values(updates: Sequence[Mapping[str, Any]], key: str) -> list[float]:
    found = (_finite(m.get(key)) for m in updates)
    return [value for value in found if value is not None]


def _total(updates: Sequence[Mapping[str, Any]], key: str, fmt: str) -> str:
    """Sum over clients; '-' when no client reported ``key`` (not 0, which would mislead)."""
    values = _values(updates, key)
    return format(sum(values), fmt) if values else MISSING


def _score(value: Any) -> str:
    number = _finite(value)
    return MISSING if number is None else f"{number:.3f}"


def format_round_row(entry: Mapping[str, Any]) -> dict[str, str]:
    """Display strings for one round, keyed by ``COLUMNS``; absent values are ``'-'``.

    Counts, tokens and seconds are summed over the round's clients (the round's total cost);
    ``y0 acc`` is the mean over clients, since first-attempt accuracy is a rate.
    """
    updates = client_updates(entry)
    clients = entry.get("clients")
    if not clients:
        clients = list((entry.get("client_metrics") or {}).keys())
    y0 = _values(updates, "y0_accuracy")
    ev = entry.get("eval")
    ev = ev if isinstance(ev, Mapping) else {}
    return {
        "round": str(entry.get("round", MISSING)),
        "clients": ",".join(str(c) for c in clients) if clients else MISSING,
        "wins": _total(updates, "wins", ".0f"),
        "losses": _total(updates, "losses", ".0f"),
        "y0 acc": f"{sum(y0) / len(y0):.3f}" if y0 else MISSING,
        "tokens": _total(updates, "tokens_generated", ",.0f"),
        "rollout s": _total(updates, "rollout_seconds", ".1f"),
        "train s": _total(updates, "train_seconds", ".1f"),
        "eval acc": _score(ev.get("accuracy")),
        "option acc": _score(ev.get("option_accuracy")),
        "valid": _score(ev.get("valid_rate")),
    }
