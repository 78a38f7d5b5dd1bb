"""Run history, summary, learning curves and the per-round table, on a hand-built history."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from spearfl.reporting.curves import plot_curves
from spearfl.reporting.history import (
    HISTORY_FILE,
    SUMMARY_FILE,
    HistoryError,
    HistoryWriter,
    read_history,
    summarize,
    write_summary,
)
from spearfl.reporting.table import COLUMNS, format_round_row

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _client(wins: int, losses: int, y0: float, tokens: int, rollout: float, train: float) -> dict:
    return {
        "wins": wins,
        "losses": losses,
        "y0_accuracy": y0,
        "tokens_generated": tokens,
        "rollout_seconds": rollout,
        "train_seconds": train,
        "revisions_attempted": losses,
        "revisions_successful": 1,
        "n_eff": wins,
    }


def _history() -> list[dict[str, Any]]:
    """Round 0: eval only; rounds 1-3 train two, two and one client; eval at rounds 2 and 3."""
    return [
        {
            "round": 0,
            "lr": 0.0003,
            "seconds": 12.0,
            "clients": [],
            "client_metrics": {},
            "eval": {
                "accuracy": 0.25,
                "n": 240,
                "method": "option_text",
                "option_accuracy": 0.3,
                "valid_rate": 0.75,
            },
        },
        {
            "round": 1,
            "lr": 0.0003,
            "seconds": 40.0,
            "clients": [4, 7],
            "client_metrics": {
                "4": _client(9, 14, 0.25, 812, 20.0, 9.0),
                "7": _client(5, 18, 0.5, 700, 18.0, 8.0),
            },
            "eval": None,
        },
        {
            "round": 2,
            "lr": 0.0003,
            "seconds": 45.0,
            "clients": [1, 4],
            "client_metrics": {
                "1": _client(12, 11, 0.5, 900, 22.0, 10.0),
                "4": _client(10, 13, 0.25, 850, 19.0, 9.5),
            },
            "eval": {
                "accuracy": 0.375,
                "n": 240,
                "method": "option_text",
                "option_accuracy": 0.5,
                "valid_rate": 0.875,
                "by_position": {"0": 0.25, "1": 0.5},
                "by_category": {"fruit": 0.5},
            },
        },
        {
            "round": 3,
            "lr": 0.0003,
            "seconds": 30.0,
            "clients": [7],
            "client_metrics": {"7": _client(8, 15, 0.25, 760, 21.0, 8.5)},
            "eval": {
                "accuracy": 0.3125,
                "n": 240,
                "method": "option_text",
                "option_accuracy": 0.4375,
                "valid_rate": 0.9375,
                "eval_split": "last 240 rows of train",
            },
        },
    ]


def _write(run_dir: Path, history: list[dict[str, Any]]) -> Path:
    writer = HistoryWriter(run_dir)
    for entry in history:
        writer.append(entry)
    return writer.path


# --- history.jsonl -------------------------------------------------------------------------


def test_writer_round_trips_one_line_per_round(tmp_path: Path) -> None:
    path = _write(tmp_path / "run", _history())
    assert path == tmp_path / "run" / HISTORY_FILE
    assert len(path.read_text().splitlines()) == 4
    assert read_history(path) == _history()
    assert read_history(tmp_path / "run") == _history()  # a run directory works too


def test_writer_appends_across_instances(tmp_path: Path) -> None:
    history = _history()
    _write(tmp_path, history[:2])
    _write(tmp_path, history[2:])  # e.g. a resumed run
    assert read_history(tmp_path) == history


def test_writer_rejects_entry_without_round(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="round"):
        HistoryWriter(tmp_path).append({"eval": None})


def test_truncated_last_line_is_ignored_with_warning(tmp_path: Path) -> None:
    path = _write(tmp_path, _history()[:3])
    with open(path, "a") as handle:  # a crash halfway through writing round 3
        handle.write(json.dumps(_history()[3])[:37])
    with pytest.warns(RuntimeWarning, match="truncated"):
        history = read_history(path)
    assert history == _history()[:3]


def test_writer_cuts_partial_tail_before_appending(tmp_path: Path) -> None:
    path = _write(tmp_path, _history()[:3])
    with open(path, "a") as handle:
        handle.write('{"round": 3, "cli')
    with pytest.warns(RuntimeWarning, match="partial"):
        writer = HistoryWriter(tmp_path)
    writer.append(_history()[3])
    assert read_history(path) == _history()


def test_corrupt_middle_line_raises(tmp_path: Path) -> None:
    path = tmp_path / HISTORY_FILE
    lines = [json.dumps(e) for e in _history()]
    lines[1] = lines[1][:20]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(HistoryError, match=r":2: corrupt"):
        read_history(path)


def test_blank_lines_are_skipped(tmp_path: Path) -> None:
    path = tmp_path / HISTORY_FILE
    path.write_text("\n".join(json.dumps(e) for e in _history()) + "\n\n")
    assert read_history(path) == _history()


# --- summary.json --------------------------------------------------------------------------


def test_summarize_numbers() -> None:
    summary = summarize(_history(), wall_seconds=130.5)
    assert summary == {
        "initial_accuracy": 0.25,
        "final_accuracy": 0.3125,
        "best_accuracy": 0.375,
        "best_round": 2,
        "rounds_completed": 3,
        "evaluations": 3,
        "eval_method": "option_text",
        "eval_split": "last 240 rows of train",
        "eval_examples": 240,
        "client_updates": 5,
        "total_tokens_generated": 812 + 700 + 900 + 850 + 760,  # 4022
        "total_wins": 9 + 5 + 12 + 10 + 8,  # 44
        "total_losses": 14 + 18 + 11 + 13 + 15,  # 71
        "mean_rollout_seconds": (20.0 + 18.0 + 22.0 + 19.0 + 21.0) / 5,  # 20.0
        "mean_train_seconds": (9.0 + 8.0 + 10.0 + 9.5 + 8.5) / 5,  # 9.0
        "wall_seconds": 130.5,
        "initial_option_accuracy": 0.3,
        "final_option_accuracy": 0.4375,
        "initial_valid_rate": 0.75,
        "final_valid_rate": 0.9375,
    }
    assert summary["total_tokens_generated"] == 4022
    assert summary["mean_rollout_seconds"] == 20.0
    assert summary["mean_train_seconds"] == 9.0


def test_summarize_without_extra_metrics_or_evals() -> None:
    history = _history()
    for entry in history:
        if entry["eval"]:
            entry["eval"] = {"accuracy": entry["eval"]["accuracy"]}
    summary = summarize(history, wall_seconds=1.0)
    assert "initial_option_accuracy" not in summary
    assert "final_valid_rate" not in summary
    assert summary["eval_method"] is None and summary["eval_split"] is None

    empty = summarize([{"round": 0, "clients": [], "client_metrics": {}, "eval": None}], 0.0)
    assert empty["initial_accuracy"] is None
    assert empty["final_accuracy"] is None
    assert empty["best_round"] is None
    assert empty["rounds_completed"] == 0
    assert empty["total_tokens_generated"] == 0
    assert empty["mean_rollout_seconds"] is None


def test_best_accuracy_tie_keeps_earliest_round() -> None:
    history = _history()
    history[3]["eval"]["accuracy"] = 0.375
    assert summarize(history, 0.0)["best_round"] == 2


def test_write_summary_is_atomic_json(tmp_path: Path) -> None:
    summary = summarize(_history(), wall_seconds=130.5)
    (tmp_path / SUMMARY_FILE).write_text("stale")
    path = write_summary(tmp_path, summary)
    assert path == tmp_path / SUMMARY_FILE
    assert json.loads(path.read_text()) == summary
    assert sorted(p.name for p in tmp_path.iterdir()) == [SUMMARY_FILE]  # no temp file left


# --- curves.png ----------------------------------------------------------------------------


def test_plot_curves_writes_png(tmp_path: Path) -> None:
    path = plot_curves(_history(), tmp_path / "plots" / "curves.png")
    assert path == tmp_path / "plots" / "curves.png"
    data = path.read_bytes()
    assert len(data) > 1000
    assert data.startswith(PNG_MAGIC)


def test_plot_curves_before_any_training(tmp_path: Path) -> None:
    only_round0 = [{"round": 0, "clients": [], "client_metrics": {}, "eval": None}]
    path = plot_curves(only_round0, tmp_path / "curves.png")
    assert path.read_bytes().startswith(PNG_MAGIC)


# --- per-round table -----------------------------------------------------------------------


def test_format_round_row_eval_only_round() -> None:
    assert format_round_row(_history()[0]) == {
        "round": "0",
        "clients": "-",
        "wins": "-",
        "losses": "-",
        "y0 acc": "-",
        "tokens": "-",
        "rollout s": "-",
        "train s": "-",
        "eval acc": "0.250",
        "option acc": "0.300",
        "valid": "0.750",
    }


def test_format_round_row_training_rounds() -> None:
    history = _history()
    assert format_round_row(history[1]) == {
        "round": "1",
        "clients": "4,7",
        "wins": "14",
        "losses": "32",
        "y0 acc": "0.375",
        "tokens": "1,512",
        "rollout s": "38.0",
        "train s": "17.0",
        "eval acc": "-",
        "option acc": "-",
        "valid": "-",
    }
    row = format_round_row(history[2])
    assert (row["clients"], row["wins"], row["losses"]) == ("1,4", "22", "24")
    assert row["tokens"] == "1,750"
    assert (row["eval acc"], row["option acc"], row["valid"]) == ("0.375", "0.500", "0.875")
    assert format_round_row(history[3])["train s"] == "8.5"


def test_format_round_row_missing_client_keys() -> None:
    entry = {
        "round": 5,
        "clients": [2],
        "client_metrics": {"2": {"wins": 3}},
        "eval": {"accuracy": 0.5},
    }
    row = format_round_row(entry)
    assert row["wins"] == "3"
    assert row["losses"] == row["tokens"] == row["y0 acc"] == row["option acc"] == "-"
    assert set(row) == set(COLUMNS)
