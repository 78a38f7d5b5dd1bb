"""Per-question evaluation records of a run, read back for paired statistics.

Each evaluation in ``history.jsonl`` carries its questions' outcomes as a list of 0/1
(``correct``; the embedded task also ``option_correct``), in the order of the eval examples.
Which questions those are is written once per run, to ``eval_questions.json``, so the history
stays small; two runs can then be paired question by question, and a report can refuse to pair
runs that were evaluated on different questions.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from spearfl.reporting.history import HISTORY_FILE, read_history

__all__ = [
    "EVAL_QUESTIONS_FILE",
    "RECORD_KEYS",
    "RecordsError",
    "RunRecords",
    "read_records",
    "write_eval_questions",
]

EVAL_QUESTIONS_FILE = "eval_questions.json"
RECORD_KEYS: Mapping[str, str] = {"accuracy": "correct", "option_accuracy": "option_correct"}
"""Which per-question list in an evaluation belongs to which accuracy."""


class RecordsError(ValueError):
    """A run whose per-question records are missing or do not fit its question list."""


@dataclass(frozen=True)
class RunRecords:
    """One run's per-question outcomes at every evaluated round.

    ``correct[i, j]`` is 1 when question ``uids[j]`` was answered right at ``rounds[i]``.
    """

    rounds: tuple[int, ...]
    uids: tuple[str, ...]
    correct: np.ndarray

    def __post_init__(self) -> None:
        shape = (len(self.rounds), len(self.uids))
        if self.correct.shape != shape:
            raise RecordsError(f"records of shape {self.correct.shape}, expected {shape}")
        if not self.rounds or not self.uids:
            raise RecordsError("records need at least one evaluated round and one question")

    @property
    def accuracy(self) -> np.ndarray:
        """Accuracy at each evaluated round."""
        return self.correct.mean(axis=1)

    @property
    def final(self) -> float:
        return float(self.accuracy[-1])

    @property
    def best_index(self) -> int:
        """Row of the best evaluated round (the earliest on ties, as in ``summary.json``)."""
        return int(np.argmax(self.accuracy))

    @property
    def best(self) -> float:
        return float(self.accuracy[self.best_index])


def write_eval_questions(run_dir: str | os.PathLike[str], uids: Sequence[str]) -> Path:
    """Write the eval questions' ids, in evaluation order, next to the run's history."""
    target = Path(run_dir) / EVAL_QUESTIONS_FILE
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps({"n": len(uids), "uids": list(uids)}) + "\n", encoding="utf-8")
    return target


def read_records(run_dir: str | os.PathLike[str], metric: str = "accuracy") -> RunRecords:
    """The per-question outcomes of ``metric`` at every round the run evaluated."""
    folder = Path(run_dir)
    key = RECORD_KEYS.get(metric)
    if key is None:
        raise RecordsError(
            f"no per-question records for {metric!r}; known: {', '.join(RECORD_KEYS)}"
        )
    if not (folder / HISTORY_FILE).is_file():
        raise RecordsError(f"{folder}: no run here (no {HISTORY_FILE})")
    questions = folder / EVAL_QUESTIONS_FILE
    if not questions.is_file():
        raise RecordsError(
            f"{questions} is missing: the run was made before per-question records existed "
            "(run it again to pair it with others)"
        )
    uids = tuple(json.loads(questions.read_text(encoding="utf-8"))["uids"])
    rounds: list[int] = []
    rows: list[list[int]] = []
    for entry in read_history(folder):
        ev = entry.get("eval")
        if not isinstance(ev, Mapping):
            continue
        where = f"{folder / HISTORY_FILE}, round {entry['round']}"
        row = ev.get(key)
        if not isinstance(row, list):
            raise RecordsError(f"{where}: the evaluation has no per-question list {key!r}")
        if len(row) != len(uids) or any(v not in (0, 1) for v in row):
            raise RecordsError(
                f"{where}: {key!r} must hold one 0/1 per question of {questions.name} "
                f"({len(uids)}), got {len(row)} values"
            )
        rounds.append(int(entry["round"]))
        rows.append(row)
    if not rows:
        raise RecordsError(f"{folder / HISTORY_FILE}: no evaluated round")
    return RunRecords(tuple(rounds), uids, np.asarray(rows, dtype=np.float64))
