"""HellaSwag task: the shared validation rows, label mapping, prompts, extraction and hints."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest

from helpers import row_with, write_jsonl
from spearfl.config import load_config
from spearfl.tasks.base import LETTERS, Example, TaskData
from spearfl.tasks.hellaswag import HellaSwagTask, clean_text
from spearfl.tasks.registry import build_task
from spearfl.tasks.rows import DataError

ROWS = 5000
GOOD_ROW = {
    "ind": 7,
    "activity_label": "Baking cookies",
    "ctx_a": "A woman puts a tray in the oven.",
    "ctx_b": "she",
    "ctx": "A woman puts a tray in the oven. she",
    "endings": ["sets a timer.", "paints the wall.", "climbs a tree.", "swims away."],
    "source_id": "activitynet~v_x",
    "split": "val",
    "split_type": "indomain",
    "label": "0",
}


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def _states_letter(text: str, letter: str) -> bool:
    return re.search(rf"(?<![A-Za-z0-9]){letter}(?![A-Za-z0-9])", text) is not None


def _row(**changes: object) -> dict[str, object]:
    return row_with(GOOD_ROW, **changes)


@pytest.fixture(scope="module")
def hs_dir(shared_data: Path) -> Path:
    folder = shared_data / "hellaswag"
    if not folder.is_dir():
        pytest.skip(f"{folder} missing")
    return folder


@pytest.fixture(scope="module")
def raw_rows(hs_dir: Path) -> list[dict]:
    lines = (hs_dir / "validation_part1.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


@pytest.fixture(scope="module")
def hs_data(hs_dir: Path) -> TaskData:
    return HellaSwagTask(path=str(hs_dir)).load()


@pytest.fixture(scope="module")
def all_examples(hs_data: TaskData) -> list[Example]:
    return hs_data.train + hs_data.eval


# ------------------------------------------------------------------------- loading real rows
def test_validation_only_folder_trains_on_head_and_evaluates_on_tail(
    hs_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    task = HellaSwagTask(path=str(hs_dir))
    with caplog.at_level(logging.WARNING, logger="spearfl.tasks.dataset"):
        data = task.load()
    assert len(data.train) + len(data.eval) == ROWS
    assert len(data.eval) == 100  # 2% of 5000
    source = str(hs_dir / "validation_part1.jsonl")
    assert [ex.meta["row"] for ex in data.train] == list(range(1, 4901))
    assert [ex.meta["row"] for ex in data.eval] == list(range(4901, 5001))
    assert all(ex.meta["source"] == source for ex in data.train + data.eval)
    assert task.resolved_eval_source == "last 100 rows of validation"
    assert any("no 'train' split" in record.getMessage() for record in caplog.records)


def test_eval_cap_and_explicit_validation_split(hs_dir: Path) -> None:
    capped = HellaSwagTask(path=str(hs_dir), max_eval_examples=10).load()
    assert len(capped.train) == 4900
    assert [ex.meta["row"] for ex in capped.eval] == list(range(4901, 4911))
    # Training on validation with eval also "validation" must not evaluate on training rows.
    same = HellaSwagTask(path=str(hs_dir), split="validation", eval_fraction=0.1).load()
    assert len(same.train) == 4500 and len(same.eval) == 500
    assert {ex.meta["row"] for ex in same.train}.isdisjoint(ex.meta["row"] for ex in same.eval)


def test_labels_map_to_letters(all_examples: list[Example], raw_rows: list[dict]) -> None:
    assert len(all_examples) == len(raw_rows) == ROWS
    seen = set()
    for example in all_examples:
        raw = raw_rows[example.meta["row"] - 1]
        assert raw["label"] in ("0", "1", "2", "3")
        assert example.gold == example.label == "ABCD"[int(raw["label"])]
        assert example.options == tuple(clean_text(e) for e in raw["endings"])
        seen.add(example.gold)
    assert seen == set("ABCD")
    assert len({ex.uid for ex in all_examples}) == ROWS  # ind alone repeats across sources


def test_int_labels_and_ctx_parts(tmp_path: Path) -> None:
    rows = [
        _row(ind=1, label=2),
        _row(ind=2, ctx=None, ctx_a="A dog runs.", ctx_b="it"),
        _row(ind=3, activity_label=""),
    ]
    data = HellaSwagTask(path=str(write_jsonl(tmp_path / "rows.jsonl", rows * 2))).load()
    first, second, third = data.train[:3]
    assert first.gold == "C" and first.uid == "activitynet~v_x:1"
    assert second.question == "Baking cookies: A dog runs. it"
    assert third.question == "A woman puts a tray in the oven. she"


def test_wikihow_markup_is_removed() -> None:
    assert clean_text("[header] How to bake [title] Preheat the oven. [step] Set it hot.") == (
        "How to bake. Preheat the oven. Set it hot."
    )


def test_every_prompt_shows_context_and_all_endings(all_examples: list[Example]) -> None:
    task = HellaSwagTask(path="unused")
    for example in all_examples:
        messages = task.messages(example)
        assert len(messages) == 1 and messages[0]["role"] == "user"
        prompt = messages[0]["content"]
        assert prompt.startswith(example.question)
        for letter, text in zip("ABCD", example.options, strict=True):
            assert f"\n{letter}. {text}\n" in prompt
        assert "most naturally" in prompt and "(A, B, C or D) only" in prompt
        plain = messages[0]["plain"]  # the base-model wording of the same question
        assert f"[CONTEXT]\n{example.question}\n\n[OPTIONS]\nA. " in plain
        assert plain.endswith(f"\nD. {example.options[3]}\n\nAnswer:")
    assert "[step]" not in "".join(ex.question + "".join(ex.options) for ex in all_examples)
    assert task.eval_method == "letter_loglik"


# ------------------------------------------------------------------------------ extraction
def _example() -> Example:
    endings = ("sets a timer.", "paints the wall.", "climbs a tree.", "swims away.")
    return Example(uid="x", question="Baking: she", options=endings, gold="A", label="A")


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        ("A", "A"),
        ("c", "C"),
        ("Answer:D", "D"),
        ("answer: b.", "B"),
        ("B seems odd and so does C, but the answer is A.", "A"),
        ("Ending C is silly; D is silly too. Answer: A, since ovens need timers.", "A"),
        ("Answer: B\nWait, the answer is D.", "D"),
        ("A woman would set a timer, so D.", "D"),  # the article "A" is not an answer
        ("Answer: E", None),
        ("", None),
    ],
)
def test_extract_answer(completion: str, expected: str | None) -> None:
    task = HellaSwagTask(path="unused")
    assert task.extract_answer(_example(), completion) == expected
    assert task.is_correct(_example(), completion) is (expected == "A")


# ------------------------------------------------------------------------------------ hints
def test_hint_never_leaks_on_any_row(all_examples: list[Example]) -> None:
    task = HellaSwagTask(path="unused")
    with_fragment = 0
    for example in all_examples:
        wrong = next(letter for letter in LETTERS if letter != example.gold)
        hint = task.oracle_hint(example, f"Answer: {wrong}")
        assert _norm(example.options[example.gold_index]) not in _norm(hint), (example.uid, hint)
        assert not _states_letter(hint, example.gold), (example.uid, hint)
        assert hint.startswith("Your answer is not correct.")
        assert "most natural continuation" in hint
        assert f"Do not answer {wrong} again" in hint
        with_fragment += "starts with" in hint
    assert with_fragment >= 0.95 * len(all_examples)


# ---------------------------------------------------------------------------- malformed rows
@pytest.mark.parametrize(
    ("bad_row", "message"),
    [
        (_row(label="4"), r"'label' must be an index 0-3, got '4'"),
        (_row(label=""), r"'label' must be an index 0-3"),
        (_row(label=True), r"'label' must be an index 0-3"),
        (_row(endings=["a", "b", "c"]), r"'endings' must have 4 entries, got 3"),
        (_row(endings="a b c d"), r"'endings' must be a list of strings"),
        (_row(endings=["a", "b", "[step]", "d"]), "every ending must have text"),
        (_row(ctx="", ctx_a=""), r"needs a non-empty 'ctx'"),
        ({k: v for k, v in GOOD_ROW.items() if k != "label"}, "missing required field"),
    ],
)
def test_malformed_rows_name_file_and_row(tmp_path: Path, bad_row: dict, message: str) -> None:
    rows = [_row(ind=i) for i in range(1, 5)]
    rows[2] = bad_row
    file = write_jsonl(tmp_path / "validation_part1.jsonl", rows)
    with pytest.raises(DataError, match=message) as info:
        HellaSwagTask(path=str(tmp_path)).load()
    assert str(info.value).startswith(f"{file}, row 3: ")

    task = HellaSwagTask(path=str(tmp_path), skip_bad_rows=True)
    data = task.load()
    assert len(data.train) + len(data.eval) == 3
    assert task.bad_rows.count == 1 and "row 3" in task.bad_rows.messages[0]


# --------------------------------------------------------------------------------- registry
@pytest.mark.parametrize("name", ["hellaswag", "Rowan/hellaswag"])
def test_registry_passes_config(name: str, tmp_path: Path) -> None:
    cfg = load_config(
        None,
        [
            f"data.dataset={name}",
            f"data.path={tmp_path}",
            "data.eval_fraction=0.1",
            "data.max_eval_examples=7",
            "data.skip_bad_rows=true",
            "feedback.mc_hint_style=paper",
            "feedback.mc_hint_words=5",
            f"hf.dataset_cache_dir={tmp_path / 'cache'}",
        ],
    )
    task = build_task(cfg)
    assert isinstance(task, HellaSwagTask)
    assert (task.path, task.hub_id, task.split, task.eval_split) == (
        str(tmp_path),
        "Rowan/hellaswag",
        "train",
        "validation",
    )
    assert (task.eval_fraction, task.max_eval_examples, task.skip_bad_rows) == (0.1, 7, True)
    assert (task.hint_style, task.hint_words) == ("paper", 5)
    assert task.cache_dir == str(tmp_path / "cache")
