"""``benchmarks/round_overhead.py``: the engine's share of a round, from a history the real
writer wrote, against sums done by hand."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from spearfl.reporting.history import HistoryWriter

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "round_overhead.py"


def _load():
    spec = importlib.util.spec_from_file_location("round_overhead", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


overhead = _load()


def _client(rollout: float, train: float, ready: float) -> dict[str, float]:
    return {"rollout_seconds": rollout, "train_seconds": train, "client_ready_seconds": ready}


def _write(run_dir: Path) -> None:
    writer = HistoryWriter(run_dir)
    writer.append({"round": 0, "clients": [], "client_metrics": {}, "eval": {"seconds": 30.0}})
    writer.append(
        {
            "round": 1,
            "clients": [3, 5],
            "client_metrics": {"3": _client(20.0, 10.0, 8.0), "5": _client(22.0, 9.0, 0.0)},
            "eval": None,
            "seconds": 70.0,
        }
    )
    writer.append(
        {
            "round": 2,
            "clients": [2, 6],
            "client_metrics": {"2": _client(18.0, 8.0, 0.1), "6": _client(16.0, 7.0, 0.0)},
            "eval": {"seconds": 20.0},
            "seconds": 70.0,
        }
    )


def test_rest_is_wall_minus_evaluation_minus_client_work(tmp_path):
    _write(tmp_path)
    rows = overhead.round_rows(tmp_path / "history.jsonl")
    assert [r["round"] for r in rows] == [1, 2]  # round 0 (evaluation only) is left out
    assert rows[0] == {"round": 1, "wall": 70.0, "eval": 0.0, "work": 61.0, "ready": 8.0,
                       "rest": 9.0}  # fmt: skip
    assert rows[1]["work"] == 49.0 and rows[1]["eval"] == 20.0
    assert abs(rows[1]["rest"] - 1.0) < 1e-9


def test_table_sums_rounds_after_the_first(tmp_path):
    _write(tmp_path)
    lines = overhead.table(overhead.round_rows(tmp_path / "history.jsonl")).splitlines()
    assert lines[2] == "| 1 | 70.0 | 0.0 | 61.0 | 8.0 | 9.0 | 12.9% |"
    # Rounds 2..N only: round 1 carries the actor's one-time start.
    assert lines[-1] == "| 2–2 | 70.0 | 20.0 | 49.0 | 0.1 | 1.0 | 1.4% |"
