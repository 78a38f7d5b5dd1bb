"""StrategyQA task: the shared train rows, yes/no gold, prompts, extraction and the hint."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from helpers import row_with, write_jsonl
from spearfl.config import load_config
from spearfl.feedback.oracle import OracleFeedback
from spearfl.tasks.base import Example, TaskData
from spearfl.tasks.registry import build_task
from spearfl.tasks.rows import DataError
from spearfl.tasks.strategyqa import StrategyQATask, declares_answer

ROWS = 1603
GOOD_ROW = {
    "qid": "q1",
    "term": "Penguin",
    "description": "flightless seabird",
    "question": "Could a penguin fly to the moon?",
    "answer": False,
    "facts": ["Penguins cannot fly.", "The moon is 384,000 km away.", "Birds need air to fly."],
    "decomposition": ["Can penguins fly?", "Is there air to the moon?"],
}
# Independent of the module's own patterns: any answer marker, any standalone yes/no.
_LEAK = re.compile(r"answer\s*:|(?<![A-Za-z])(yes|no)(?![A-Za-z])", re.IGNORECASE)


def _row(**changes: object) -> dict[str, object]:
    return row_with(GOOD_ROW, **changes)


@pytest.fixture(scope="module")
def sqa_dir(shared_data: Path) -> Path:
    folder = shared_data / "strategy_qa"
    if not folder.is_dir():
        pytest.skip(f"{folder} missing")
    return folder


@pytest.fixture(scope="module")
def raw_rows(sqa_dir: Path) -> list[dict]:
    lines = (sqa_dir / "train.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


@pytest.fixture(scope="module")
def sqa_data(sqa_dir: Path) -> TaskData:
    return StrategyQATask(path=str(sqa_dir)).load()


@pytest.fixture(scope="module")
def all_examples(sqa_data: TaskData) -> list[Example]:
    return sqa_data.train + sqa_data.eval


def _example(gold: str = "no", facts: tuple[str, ...] = ("Penguins cannot fly.",)) -> Example:
    return Example(
        uid="x",
        question="Could a penguin fly to the moon?",
        options=("yes", "no"),
        gold=gold,
        label=gold,
        meta={"facts": facts},
    )


# ------------------------------------------------------------------------- loading real rows
def test_row_counts_and_train_tail_eval(sqa_dir: Path, sqa_data: TaskData) -> None:
    assert len(sqa_data.train) + len(sqa_data.eval) == ROWS
    assert len(sqa_data.eval) == 32  # 2% of 1603, no test split locally
    assert [ex.meta["row"] for ex in sqa_data.eval] == list(range(ROWS - 31, ROWS + 1))
    first = sqa_data.train[0]
    assert first.uid == "4b82bd6ced332e84006e"
    assert first.meta["source"] == str(sqa_dir / "train.jsonl") and first.meta["row"] == 1
    task = StrategyQATask(path=str(sqa_dir), max_eval_examples=5)
    capped = task.load()
    assert [ex.meta["row"] for ex in capped.eval] == list(range(ROWS - 31, ROWS - 26))
    assert task.resolved_eval_source == "last 32 rows of train"
    assert task.eval_split == "test" and task.eval_method == "generative"


def test_bool_answers_map_to_yes_no(all_examples: list[Example], raw_rows: list[dict]) -> None:
    assert len(raw_rows) == ROWS
    counts = {"yes": 0, "no": 0}
    for example in all_examples:
        raw = raw_rows[example.meta["row"] - 1]
        assert isinstance(raw["answer"], bool)
        assert example.gold == example.label == ("yes" if raw["answer"] else "no")
        assert example.meta["facts"] == tuple(f.strip() for f in raw["facts"] if f.strip())
        counts[example.gold] += 1
    assert counts == {"yes": 738, "no": 865}


def test_every_prompt_asks_the_question(all_examples: list[Example]) -> None:
    task = StrategyQATask(path="unused")
    for example in all_examples:
        messages = task.messages(example)
        assert len(messages) == 1 and messages[0]["role"] == "user"
        prompt = messages[0]["content"]
        assert prompt.startswith(example.question)
        assert '"Answer: yes" or "Answer: no"' in prompt and "step by step" in prompt
    assert task.answer_marker == "Answer:"


# ------------------------------------------------------------------------------ extraction
@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        ("Penguins cannot fly.\nAnswer: no", "no"),
        ("Answer: Yes.", "yes"),
        ("answer:no", "no"),
        ("ANSWER :  NO, because penguins are flightless.", "no"),
        ("**Answer:** Yes", "yes"),
        ("Final answer: yes!", "yes"),
        ("Answer: yes\nOn second thought the moon has no air.\nAnswer: no", "no"),
        ("Yes, birds fly, no doubt. But penguins do not.\nAnswer: no", "no"),
        ("Is it yes or no? I think yes.", "yes"),  # no declaration: last standalone word
        ("No.", "no"),
        ("Answer: not sure", None),
        ("Nobody knows; maybe a yes-man would say so.", None),
        ("", None),
    ],
)
def test_extract_answer(completion: str, expected: str | None) -> None:
    task = StrategyQATask(path="unused")
    assert task.extract_answer(_example(), completion) == expected
    assert task.is_correct(_example(), completion) is (expected == "no")
    span = task.answer_span(_example(), completion)
    if expected is None:
        assert span is None
    else:
        assert span is not None and completion[span[0] : span[1]].lower() == expected


def test_answer_span_is_the_last_declaration() -> None:
    task = StrategyQATask(path="unused")
    text = "No idea at first.\nAnswer: yes\nHmm.\nAnswer: No"
    assert task.answer_span(_example(), text) == (len(text) - 2, len(text))


@pytest.mark.parametrize(
    ("completion", "ok"),
    [
        ("Reasoning.\nAnswer: no", True),
        ("Answer: Yes.", True),
        ("**Answer:** no", True),
        ("Reasoning.\nThe answer is no.", False),
        ("Answer: no, because penguins cannot fly.", False),
        ("no", False),
    ],
)
def test_is_well_formatted(completion: str, ok: bool) -> None:
    assert StrategyQATask(path="unused").is_well_formatted(_example(), completion) is ok


def test_answer_complete_waits_for_the_whole_word() -> None:
    task = StrategyQATask(path="unused")
    assert task.answer_complete("so.\nAnswer: yes\n")
    assert task.answer_complete("flightless. Answer: No.")
    assert not task.answer_complete("Answer: no")  # could still become "not ..."
    assert not task.answer_complete("Answer: not sure")


# ------------------------------------------------------------------------------------ hints
def test_hint_never_declares_an_answer_on_any_row(all_examples: list[Example]) -> None:
    task = StrategyQATask(path="unused")
    replaced = 0
    for example in all_examples:
        wrong = "yes" if example.gold == "no" else "no"
        hint = task.oracle_hint(example, f"Reasoning.\nAnswer: {wrong}")
        assert not _LEAK.search(hint), (example.uid, hint)
        assert not declares_answer(hint)
        assert hint.startswith("Your answer is not correct.")
        assert "format the question asks for" in hint
        facts = example.meta["facts"]
        wanted = max(1, len(facts) // 2)
        safe = [fact for fact in facts if not _LEAK.search(fact)]
        shown = [line[2:] for line in hint.splitlines() if line.startswith("- ")]
        assert shown == safe[:wanted], example.uid
        replaced += safe[:wanted] != list(facts[:wanted])
    assert replaced == 14  # rows whose first facts say "yes"/"no" use later facts instead


def test_hint_skips_a_fact_with_yes_or_no() -> None:
    task = StrategyQATask(path="unused")
    facts = ("No penguin has flown.", "Penguins swim.", "The moon has no air.", "Rockets fly.")
    hint = task.oracle_hint(_example(facts=facts), "Answer: yes")
    assert "- Penguins swim.\n- Rockets fly." in hint and "No penguin" not in hint
    assert "Facts" not in task.oracle_hint(_example(facts=("No.",)), "Answer: yes")
    assert "Facts" not in task.oracle_hint(_example(facts=()), "Answer: yes")
    oracle = OracleFeedback(task)
    assert oracle.feedback(_example(), "Answer: no").correct
    assert "Penguins cannot fly." in (oracle.feedback(_example(), "Answer: yes").hint or "")


# ---------------------------------------------------------------------------- malformed rows
@pytest.mark.parametrize(
    ("bad_row", "message"),
    [
        ({k: v for k, v in GOOD_ROW.items() if k != "question"}, "missing required field"),
        (_row(question="  "), "'question' must be a non-empty string"),
        (_row(answer="maybe"), r"'answer' must be a bool .*'maybe'"),
        (_row(answer=1), r"'answer' must be a bool .*1"),
        (_row(facts="Penguins cannot fly."), r"'facts' must be a list of strings, got str"),
        (_row(facts=["ok", 3]), r"'facts' must be a list of strings, got a list of int/str"),
        ({k: v for k, v in GOOD_ROW.items() if k != "facts"}, "missing required field"),
    ],
)
def test_malformed_rows_name_file_and_row(tmp_path: Path, bad_row: dict, message: str) -> None:
    rows = [_row(qid=f"q{i}") for i in range(1, 5)]
    rows[1] = bad_row
    file = write_jsonl(tmp_path / "train.jsonl", rows)
    with pytest.raises(DataError, match=message) as info:
        StrategyQATask(path=str(tmp_path)).load()
    assert str(info.value).startswith(f"{file}, row 2: ")

    task = StrategyQATask(path=str(tmp_path), skip_bad_rows=True)
    data = task.load()
    assert [ex.uid for ex in data.train + data.eval] == ["q1", "q3", "q4"]
    assert task.bad_rows.count == 1 and "row 2" in task.bad_rows.summary()


def test_true_false_strings_are_accepted(tmp_path: Path) -> None:
    rows = [_row(qid="a", answer="True"), _row(qid="b", answer=" false "), _row(qid="c")]
    data = StrategyQATask(path=str(write_jsonl(tmp_path / "train.jsonl", rows))).load()
    assert [ex.gold for ex in data.train + data.eval] == ["yes", "no", "no"]


def test_hub_eval_split_defaults_to_test(monkeypatch: pytest.MonkeyPatch) -> None:
    datasets = pytest.importorskip("datasets")
    calls: list[str] = []

    def fake_load(hub_id: str, config: str | None, cache_dir: str | None = None, **kw: object):
        calls.append(hub_id)
        return {"train": [_row(qid="t1"), _row(qid="t2")], "test": [_row(qid="e1")]}

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    data = StrategyQATask().load()
    assert [ex.uid for ex in data.train] == ["t1", "t2"] and [ex.uid for ex in data.eval] == ["e1"]
    assert set(calls) == {"ChilleD/StrategyQA"}
    assert data.eval[0].meta["source"] == "ChilleD/StrategyQA[test]"


# --------------------------------------------------------------------------------- registry
@pytest.mark.parametrize("name", ["strategyqa", "ChilleD/StrategyQA"])
def test_registry_passes_config(name: str, tmp_path: Path) -> None:
    cfg = load_config(
        None,
        [
            f"data.dataset={name}",
            f"data.path={tmp_path}",
            "data.eval_split=validation",
            "data.eval_fraction=0.05",
            "data.max_eval_examples=3",
            "data.skip_bad_rows=true",
        ],
    )
    task = build_task(cfg)
    assert isinstance(task, StrategyQATask)
    assert (task.path, task.hub_id, task.eval_split) == (
        str(tmp_path),
        "ChilleD/StrategyQA",
        "validation",
    )
    assert (task.eval_fraction, task.max_eval_examples, task.skip_bad_rows) == (0.05, 3, True)
