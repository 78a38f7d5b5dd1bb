"""Per-question records read back from run directories, and the multi-seed comparison report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from helpers import eval_record, write_finished_run
from spearfl.reporting.comparison import COMPARISON_MD, COMPARISON_PNG
from spearfl.reporting.history import HistoryWriter
from spearfl.reporting.records import (
    EVAL_QUESTIONS_FILE,
    RecordsError,
    read_records,
    write_eval_questions,
)
from spearfl.reporting.seeds import (
    seed_comparison_markdown,
    seed_overrides,
    seed_run_dir,
    write_seed_comparison,
)
from spearfl.reporting.statistics import paired_bootstrap

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _ones(n: int, right: int) -> list[int]:
    return [1] * right + [0] * (n - right)


# ----------------------------------------------------------------- the records
def test_records_hold_every_evaluated_round_in_question_order(tmp_path):
    uids = ["q-a", "q-b", "q-c", "q-d"]
    run = write_finished_run(
        tmp_path / "run",
        uids,
        {0: eval_record([0, 1, 0, 0], [1, 1, 0, 0]), 2: eval_record([1, 1, 0, 1], [1, 1, 1, 0])},
    )
    assert json.loads((run / EVAL_QUESTIONS_FILE).read_text()) == {"n": 4, "uids": uids}
    records = read_records(run)
    assert records.rounds == (0, 2)  # round 1 was not evaluated
    assert records.uids == tuple(uids)
    assert records.correct.tolist() == [[0, 1, 0, 0], [1, 1, 0, 1]]
    assert (records.final, records.best) == (0.75, 0.75)
    option = read_records(run, "option_accuracy")
    assert option.correct.tolist() == [[1, 1, 0, 0], [1, 1, 1, 0]]
    assert np.allclose(option.accuracy, [0.5, 0.75])


def test_records_that_do_not_fit_are_refused_with_where(tmp_path):
    old = tmp_path / "old"
    writer = HistoryWriter(old)
    writer.append({"round": 0, "eval": {"accuracy": 0.5}})
    with pytest.raises(RecordsError, match=r"old/eval_questions.json is missing"):
        read_records(old)
    write_eval_questions(old, ["a", "b"])
    with pytest.raises(RecordsError, match=r"history.jsonl, round 0: .*no per-question list"):
        read_records(old)
    short = write_finished_run(tmp_path / "short", ["a", "b", "c"], {0: eval_record([1, 0])})
    with pytest.raises(RecordsError, match=r"round 0: 'correct' must hold one 0/1 per question"):
        read_records(short)
    with pytest.raises(RecordsError, match="no per-question records for 'valid_rate'"):
        read_records(short, "valid_rate")


# ------------------------------------------------------------ multi-seed report
N = 40


def _comparison(root: Path) -> None:
    """Seeds 42 and 43; spear right on every question grpo gets, plus 6 (seed 42) and 4 more.

    Final accuracies: spear 0.60 / 0.70, grpo 0.45 / 0.60; best: spear's round-1 0.65 at seed
    42 (above its final 0.60), else the final round.
    """
    for seed, spear, spear_best, grpo in ((42, 24, 26, 18), (43, 28, 10, 24)):
        uids = [f"{seed}-{j}" for j in range(N)]
        write_finished_run(
            seed_run_dir(root, seed, "spear"),
            uids,
            _evals(8, spear_best, spear),
            tokens=100,
        )
        write_finished_run(
            seed_run_dir(root, seed, "grpo"),
            uids,
            _evals(8, 8, grpo),
            tokens=400,
        )


def _evals(*right: int) -> dict[int, dict]:
    """Rounds 0, 1, 2 with that many of the N questions right (the first ones)."""
    return {r: eval_record(_ones(N, k)) for r, k in enumerate(right)}


def _row(text: str, first_cell: str) -> list[str]:
    line = next(line for line in text.splitlines() if line.startswith(f"| {first_cell} |"))
    return [cell.strip() for cell in line.strip("|").split("|")]


def _numbers(cell: str) -> list[float]:
    """'0.650 [0.600, 0.700]' -> [0.65, 0.6, 0.7]"""
    return [float(x) for x in cell.replace("[", " ").replace("]", " ").replace(",", " ").split()]


def test_layout_of_a_multi_seed_comparison(tmp_path):
    assert seed_run_dir(tmp_path, 43, "grpo") == tmp_path / "seed-43" / "grpo"
    assert seed_overrides(tmp_path, 43, "grpo") == [
        "algorithm.name=grpo",
        "data.seed=43",
        f"output_dir={tmp_path / 'seed-43' / 'grpo'}",
    ]


def test_multi_seed_report_has_intervals_per_seed_values_and_paired_differences(tmp_path):
    _comparison(tmp_path)
    md, png = write_seed_comparison(tmp_path, ["spear", "grpo"], [42, 43], note="Config: x.")
    assert (md, png) == (tmp_path / COMPARISON_MD, tmp_path / COMPARISON_PNG)
    assert png.read_bytes()[:8] == PNG_MAGIC and png.stat().st_size > 5000
    text = md.read_text(encoding="utf-8")
    assert text.startswith("# Algorithm comparison over seeds 42, 43\n\nConfig: x.\n")

    spear = _row(text, "spear")
    final, best = _numbers(spear[1]), _numbers(spear[2])
    assert final[0] == 0.65 and final[1] < 0.65 < final[2]
    assert best[0] == pytest.approx((0.65 + 0.7) / 2)  # round 1 at seed 42, round 2 at 43
    assert spear[3:] == ["0.600, 0.700", "0.650, 0.700", "100"]
    grpo = _row(text, "grpo")
    assert _numbers(grpo[1])[0] == pytest.approx(0.525)
    assert grpo[3:] == ["0.450, 0.600", "0.450, 0.600", "400"]

    assert "spear against each baseline (spear minus baseline, paired):" in text
    # the first "| grpo |" row is the accuracy table's, the second the pair's
    pair_line = [line for line in text.splitlines() if line.startswith("| grpo |")][1]
    versus = [cell.strip() for cell in pair_line.strip("|").split("|")]
    diff = _numbers(versus[1])
    assert diff[0] == pytest.approx(0.125)  # (0.15 + 0.10) / 2
    assert diff[1] > 0  # spear is never below grpo on a question: every draw favours it
    assert versus[2] == "1.000"
    assert "resamples the seeds (42, 43) with replacement" in text


def test_the_compared_algorithm_is_a_parameter(tmp_path):
    _comparison(tmp_path)
    md, _ = write_seed_comparison(tmp_path, ["spear", "grpo"], [42, 43], target="grpo")
    text = md.read_text(encoding="utf-8")
    assert "grpo against each baseline (grpo minus baseline, paired):" in text
    pair_line = [line for line in text.splitlines() if line.startswith("| spear |")][1]
    cells = [cell.strip() for cell in pair_line.strip("|").split("|")]
    assert _numbers(cells[1])[0] == pytest.approx(-0.125) and cells[2] == "0.000"
    with pytest.raises(ValueError, match="'opsd', is not among spear, grpo"):
        write_seed_comparison(tmp_path, ["spear", "grpo"], [42, 43], target="opsd")


def test_one_seed_report_says_what_its_intervals_cover(tmp_path):
    _comparison(tmp_path)
    records = {name: {42: read_records(seed_run_dir(tmp_path, 42, name))} for name in ("spear",)}
    text = seed_comparison_markdown(paired_bootstrap(records, draws=200), records, "spear")
    assert "With one seed the intervals cover the choice of questions only" in text
    assert "against each baseline" not in text  # nothing to compare with


def test_a_missing_run_is_named(tmp_path):
    _comparison(tmp_path)
    with pytest.raises(RecordsError, match="seed-44/spear: no run here"):
        write_seed_comparison(tmp_path, ["spear", "grpo"], [42, 44])
