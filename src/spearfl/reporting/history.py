"""Per-round run history (``history.jsonl``), the end-of-run ``summary.json`` and the
``complete.json`` marker.

The history is the run's only durable record of progress, so it is append-only JSON lines,
flushed and fsynced after every round: a crash loses at most the round that was in flight,
and the reader tolerates the half-written line such a crash can leave behind.

``complete.json`` is written last, after the final round, the final adapter, the summary and
the curves: its presence is what "finished" means (a ``summary.json`` alone is not proof, a
run cut off while writing its last files has one).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "COMPLETE_FILE",
    "EXTRA_EVAL_METRICS",
    "HISTORY_FILE",
    "SUMMARY_FILE",
    "HistoryError",
    "HistoryWriter",
    "client_updates",
    "read_complete",
    "read_history",
    "summarize",
    "truncate_history",
    "write_complete",
    "write_summary",
]

HISTORY_FILE = "history.jsonl"
SUMMARY_FILE = "summary.json"
COMPLETE_FILE = "complete.json"
EXTRA_EVAL_METRICS: tuple[str, ...] = ("option_accuracy", "valid_rate")
"""Optional eval keys reported next to ``accuracy`` whenever an evaluator provides them."""


class HistoryError(ValueError):
    """A history file that is corrupt somewhere other than its (crash-prone) last line."""


class HistoryWriter:
    """Appends one JSON line per round to ``<run_dir>/history.jsonl``.

    Each ``append`` opens, writes, flushes and fsyncs, so nothing is buffered between rounds.
    On construction a partial last line (from a crash mid-write) is cut off, so that resuming
    into the same run directory does not glue a new record onto the broken one.
    """

    def __init__(self, run_dir: str | os.PathLike[str]):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.run_dir / HISTORY_FILE
        _drop_partial_tail(self.path)

    def append(self, entry: Mapping[str, Any]) -> None:
        """Write ``entry`` as one line and make it durable before returning."""
        if "round" not in entry:
            raise ValueError("a history entry needs a 'round' key")
        # allow_nan=False: NaN/Infinity are not JSON and would break strict readers downstream.
        line = json.dumps(dict(entry), allow_nan=False, separators=(",", ":"))
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(line + "\n")
            handle.flush()
            os.fsync(handle.fileno())


def _drop_partial_tail(path: Path) -> None:
    """Truncate ``path`` after its last newline; a crash can only have left the tail unfinished."""
    if not path.is_file():
        return
    data = path.read_bytes()
    if not data or data.endswith(b"\n"):
        return
    keep = data.rfind(b"\n") + 1  # 0 when the only line is the partial one
    warnings.warn(
        f"{path}: dropping a partial last line ({len(data) - keep} bytes) left by an "
        "interrupted write",
        RuntimeWarning,
        stacklevel=3,
    )
    with open(path, "r+b") as handle:
        handle.truncate(keep)
        handle.flush()
        os.fsync(handle.fileno())


def truncate_history(run_dir: str | os.PathLike[str], last_round: int) -> int:
    """Keep only the entries up to ``last_round`` (a resumed run redoes the later ones).

    The file is rewritten to a temporary file and renamed over the old one, so a crash here
    leaves either the old history or the new one. Returns how many entries were dropped.
    """
    path = Path(run_dir) / HISTORY_FILE
    if not path.is_file():
        return 0
    entries = read_history(path)
    kept = [e for e in entries if int(e["round"]) <= last_round]
    if len(kept) == len(entries) and path.read_bytes().endswith(b"\n"):
        return 0
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".history-", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        for entry in kept:
            handle.write(json.dumps(entry, allow_nan=False, separators=(",", ":")) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    return len(entries) - len(kept)


def read_history(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Load a history file (or the one inside a run directory), one dict per round.

    An unparsable *last* line is what a crash mid-write looks like, so it is skipped with a
    ``RuntimeWarning``; an unparsable line anywhere else means real corruption and raises
    ``HistoryError``.
    """
    file = Path(path)
    if file.is_dir():
        file = file / HISTORY_FILE
    lines = [
        (number, text)
        for number, text in enumerate(file.read_text(encoding="utf-8").splitlines(), start=1)
        if text.strip()
    ]
    history: list[dict[str, Any]] = []
    for index, (number, text) in enumerate(lines):
        try:
            entry = json.loads(text)
        except json.JSONDecodeError as error:
            if index == len(lines) - 1:
                warnings.warn(
                    f"{file}:{number}: ignoring truncated last line ({error.msg})",
                    RuntimeWarning,
                    stacklevel=2,
                )
                break
            raise HistoryError(f"{file}:{number}: corrupt history line: {error.msg}") from error
        if not isinstance(entry, dict):
            kind = type(entry).__name__
            raise HistoryError(f"{file}:{number}: expected a JSON object, got {kind}")
        history.append(entry)
    return history


def client_updates(entry: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The per-client metric dicts of one round (empty for round 0 or a round with no clients)."""
    metrics = entry.get("client_metrics") or {}
    return [value for value in metrics.values() if isinstance(value, Mapping)]


def _number(value: Any) -> float | None:
    """``value`` as a finite number, or None, so missing and NaN values are skipped alike."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return value if math.isfinite(value) else None


def _client_values(history: Sequence[Mapping[str, Any]], key: str) -> Iterator[float]:
    for entry in history:
        for metrics in client_updates(entry):
            value = _number(metrics.get(key))
            if value is not None:
                yield value


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _evals(history: Sequence[Mapping[str, Any]]) -> list[tuple[int, Mapping[str, Any]]]:
    """(round, eval) for every round that was evaluated, in file order."""
    return [
        (int(entry["round"]), entry["eval"])
        for entry in history
        if isinstance(entry.get("eval"), Mapping)
    ]


def summarize(history: Sequence[Mapping[str, Any]], wall_seconds: float) -> dict[str, Any]:
    """The headline numbers of a run, as written to ``summary.json``.

    Accuracies are None when no evaluation produced them, rather than 0, so a run that never
    evaluated cannot be mistaken for one that scored zero. Extra eval metrics
    (``EXTRA_EVAL_METRICS``) get ``initial_<name>``/``final_<name>`` keys only when some
    evaluation reported them.
    """
    evals = _evals(history)
    initial = next((ev for rnd, ev in evals if rnd == 0), None)
    scored = [(rnd, _number(ev.get("accuracy"))) for rnd, ev in evals]
    scored = [(rnd, acc) for rnd, acc in scored if acc is not None]

    best_round: int | None = None
    best_accuracy: float | None = None
    for rnd, acc in scored:  # strict '>' keeps the earliest round on ties
        if best_accuracy is None or acc > best_accuracy:
            best_round, best_accuracy = rnd, acc

    rounds = [int(entry["round"]) for entry in history if "round" in entry]
    rollout = list(_client_values(history, "rollout_seconds"))
    train = list(_client_values(history, "train_seconds"))
    summary: dict[str, Any] = {
        "initial_accuracy": _number(initial.get("accuracy")) if initial else None,
        "final_accuracy": scored[-1][1] if scored else None,
        "best_accuracy": best_accuracy,
        "best_round": best_round,
        "rounds_completed": max((r for r in rounds if r > 0), default=0),
        "evaluations": len(evals),
        "eval_method": evals[-1][1].get("method") if evals else None,
        "eval_split": evals[-1][1].get("eval_split") if evals else None,
        "eval_examples": evals[-1][1].get("n") if evals else None,
        "client_updates": sum(len(client_updates(entry)) for entry in history),
        "total_tokens_generated": int(sum(_client_values(history, "tokens_generated"))),
        "total_wins": int(sum(_client_values(history, "wins"))),
        "total_losses": int(sum(_client_values(history, "losses"))),
        "mean_rollout_seconds": _mean(rollout),
        "mean_train_seconds": _mean(train),
        "wall_seconds": float(wall_seconds),
    }
    for name in EXTRA_EVAL_METRICS:
        values = [_number(ev.get(name)) for _, ev in evals if name in ev]
        values = [value for value in values if value is not None]
        if not values:
            continue
        summary[f"initial_{name}"] = _number(initial.get(name)) if initial else None
        summary[f"final_{name}"] = values[-1]
    return summary


def _write_json_atomically(target: Path, data: Mapping[str, Any]) -> Path:
    """Write ``data`` to ``target`` through a temporary file in the same folder and a rename,
    so readers see the old file or the new one, never half of one."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(dict(data), handle, indent=2, sort_keys=True)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, target)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return target


def write_summary(run_dir: str | os.PathLike[str], summary: Mapping[str, Any]) -> Path:
    """Write ``<run_dir>/summary.json`` atomically, so readers never see a half-written file."""
    return _write_json_atomically(Path(run_dir) / SUMMARY_FILE, summary)


def write_complete(run_dir: str | os.PathLike[str], rounds: int, clients_per_round: int) -> Path:
    """Mark the run finished (atomically): call only after every other file of the run is
    written."""
    marker = {
        "complete": True,
        "rounds": int(rounds),
        "clients_per_round": int(clients_per_round),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    return _write_json_atomically(Path(run_dir) / COMPLETE_FILE, marker)


def read_complete(run_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The run's completion marker, or None when the run never finished (or the marker is not
    one: an unreadable marker is treated as absent, so the run is resumed rather than kept)."""
    path = Path(run_dir) / COMPLETE_FILE
    try:
        marker = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return marker if isinstance(marker, dict) and marker.get("complete") is True else None
