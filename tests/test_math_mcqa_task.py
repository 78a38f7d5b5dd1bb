"""MATH-MCQA task on hand-written rows in the Hub schema (no offline copy exists)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from helpers import write_jsonl
from spearfl.config import load_config
from spearfl.tasks.base import Example, TaskData
from spearfl.tasks.math_mcqa import MathMCQATask, mentions, strip_boxed
from spearfl.tasks.registry import build_task
from spearfl.tasks.rows import DataError

ROWS = [
    {  # nested \boxed, and a line that states the answer without a box
        "problem": "Simplify $\\frac{2}{4}$.",
        "choices": ["$\\frac{1}{4}$", "$\\frac{1}{2}$", "$2$", "$\\frac{3}{4}$"],
        "answer": 1,
        "answer_text": "$\\frac{1}{2}$",
        "solution": "Both 2 and 4 are divisible by 2.\n"
        "Dividing numerator and denominator by 2 gives $\\dfrac{1}{2}$.\n"
        "So the fraction is $\\boxed{\\frac{1}{2}}$.",
        "level": "Level 1",
        "type": "Prealgebra",
    },
    {  # a short numeric answer: "x = 5" goes, "15" stays; the index as a digit string
        "problem": "Solve $3x = 15$.",
        "choices": ["$3$", "$5$", "$15$", "$45$"],
        "answer": "1",
        "solution": "We have $3x = 15$.\nDivide both sides by 3 to get $x = 5$.\n"
        "Thus $x=\\boxed{5}$.",
    },
    {  # every solution line gives the answer away: the option fragment is the fallback
        "problem": "Evaluate $\\sqrt{12} + 1$.",
        "choices": ["$3$", "$13$", "$2\\sqrt{3} + 1$", "$4\\sqrt{3}$"],
        "answer": 2,
        "solution": "Since $\\sqrt{12} = 2\\sqrt{3}$, the value is $2\\sqrt{3}+1$.\n\n"
        "$$\\boxed{2\\sqrt{3}+1}$$",
    },
    {  # the gold letter appears as a point's name: that line goes
        "problem": "Points $A$, $B$ and $C$ lie on a line with $AB = 2$ and $BC = 4$. Find $AC$.",
        "choices": ["$2$", "$4$", "$6$", "$8$"],
        "answer": 2,
        "solution": "Point C lies beyond B.\nThe lengths add up.\nSo $AC = 2 + 4 = 6$.\n"
        "The result is $\\boxed{6}$.",
    },
    {
        "problem": "What is $10 - 7$?",
        "choices": ["$1$", "$2$", "$3$", "$17$"],
        "answer": 2,
        "solution": "Subtracting, $10 - 7 = \\boxed{3}$.",
    },
    {
        "problem": "How many sides does a hexagon have?",
        "choices": ["five", "six", "seven", "eight"],
        "answer": 1,
        "solution": "A hexagon is a polygon.\nIt has as many sides as vertices.\n"
        "Count them: $\\boxed{6}$ sides, i.e. six.",
    },
]
BAD_INDEX = {**ROWS[4], "answer": 4}
THREE_CHOICES = {**ROWS[4], "choices": ["$1$", "$2$", "$3$"]}


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def _states_letter(text: str, letter: str) -> bool:
    return re.search(rf"(?<![A-Za-z0-9]){letter}(?![A-Za-z0-9])", text) is not None


@pytest.fixture()
def math_dir(tmp_path: Path) -> Path:
    write_jsonl(tmp_path / "train.jsonl", ROWS)
    write_jsonl(tmp_path / "test.jsonl", ROWS[:2])
    return tmp_path


@pytest.fixture()
def math_data(math_dir: Path) -> TaskData:
    return MathMCQATask(path=str(math_dir)).load()


# ----------------------------------------------------------------------------------- loading
def test_rows_load_with_letters_and_provenance(math_dir: Path, math_data: TaskData) -> None:
    assert [ex.gold for ex in math_data.train] == ["B", "B", "C", "C", "C", "B"]
    assert [ex.label for ex in math_data.train] == [ex.gold for ex in math_data.train]
    assert [ex.uid for ex in math_data.eval] == ["test.jsonl:1", "test.jsonl:2"]
    first = math_data.train[0]
    assert first.options == tuple(ROWS[0]["choices"])
    assert first.meta["source"] == str(math_dir / "train.jsonl") and first.meta["row"] == 1
    assert first.meta["type"] == "Prealgebra" and first.meta["answer_text"] == "$\\frac{1}{2}$"


def test_prompt_lists_options_and_asks_for_answer_line(math_data: TaskData) -> None:
    task = MathMCQATask(path="unused")
    for example in math_data.train:
        prompt = task.messages(example)[0]["content"]
        assert prompt.startswith(example.question)
        for letter, text in zip("ABCD", example.options, strict=True):
            assert f"\n{letter}. {text}\n" in prompt
        assert 'end with a final line of the form "Answer: X"' in prompt
        assert "(A, B, C or D)" in prompt
    assert (task.eval_method, task.answer_marker, task.hint_words) == ("generative", "Answer:", 10)


def test_eval_falls_back_to_train_tail(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "train.jsonl", ROWS)
    task = MathMCQATask(path=str(tmp_path), eval_fraction=0.34)
    data = task.load()
    assert len(data.train) == 4 and [ex.meta["row"] for ex in data.eval] == [5, 6]
    assert task.resolved_eval_source == "last 2 rows of train"


# ---------------------------------------------------------------------------- malformed rows
@pytest.mark.parametrize(
    ("bad_row", "message"),
    [
        (BAD_INDEX, r"'answer' must be an index 0-3, got 4"),
        (THREE_CHOICES, r"'choices' must have 4 entries, got 3"),
        ({**ROWS[4], "answer": "B"}, r"'answer' must be an index 0-3, got 'B'"),
        ({**ROWS[4], "choices": ["$1$", "", "$3$", "$4$"]}, "every choice must have text"),
        ({**ROWS[4], "solution": None}, "missing required field"),
        ({**ROWS[4], "solution": ["x"]}, "'solution' must be a string"),
        ({k: v for k, v in ROWS[4].items() if k != "problem"}, "missing required field"),
    ],
)
def test_malformed_rows_name_file_and_row(tmp_path: Path, bad_row: dict, message: str) -> None:
    file = write_jsonl(tmp_path / "train.jsonl", [*ROWS[:3], bad_row, *ROWS[3:]])
    with pytest.raises(DataError, match=message) as info:
        MathMCQATask(path=str(tmp_path)).load()
    assert str(info.value).startswith(f"{file}, row 4: ")

    task = MathMCQATask(path=str(tmp_path), skip_bad_rows=True)
    data = task.load()
    assert len(data.train) + len(data.eval) == len(ROWS)
    assert task.bad_rows.count == 1 and "row 4" in task.bad_rows.messages[0]


def test_skip_counts_both_bad_rows(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "train.jsonl", [BAD_INDEX, *ROWS, THREE_CHOICES])
    task = MathMCQATask(path=str(tmp_path), skip_bad_rows=True)
    data = task.load()
    assert len(data.train) + len(data.eval) == len(ROWS) and task.bad_rows.count == 2
    assert "skipped 2 malformed rows" in task.bad_rows.summary()


# ------------------------------------------------------------------------------ extraction
def _example() -> Example:
    options = ("$3$", "$5$", "$15$", "$45$")
    return Example(uid="x", question="Solve $3x = 15$.", options=options, gold="B", label="B")


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        ("Option A gives 9 and option C gives 45, so x = 5.\nAnswer: B", "B"),
        ("Answer: $\\boxed{B}$", "B"),
        ("Answer: $\\text{(D)}$", "D"),
        ("answer: c", "C"),
        ("Answer:D", "D"),
        ("Answer: (B)", "B"),
        ("Answer: B. Checking option A again confirms it.", "B"),
        ("Answer: A\nWait, I divided wrongly.\nAnswer: D", "D"),
        ("The value is $5$, which is option B.", "B"),  # no declaration: last capital letter
        ("So the answer is a number, namely 5.", None),
        ("x = 5", None),
    ],
)
def test_extract_answer(completion: str, expected: str | None) -> None:
    task = MathMCQATask(path="unused")
    assert task.extract_answer(_example(), completion) == expected
    span = task.answer_span(_example(), completion)
    if expected is None:
        assert span is None
    else:
        assert span is not None and completion[span[0] : span[1]].upper() == expected


def test_format_and_stop_rules() -> None:
    task = MathMCQATask(path="unused")
    assert task.is_well_formatted(_example(), "3x = 15, x = 5.\nAnswer: B")
    assert not task.is_well_formatted(_example(), "B")  # reasoning + answer line required
    assert not task.is_well_formatted(_example(), "The answer is B.")
    assert task.answer_complete("so x = 5.\nAnswer: B\n")
    assert not task.answer_complete("Answer: B")  # might still become a word
    assert not task.answer_complete("so the answer is a ")  # article, or a letter?
    assert task.answer_complete("so the answer is b.")
    assert task.answer_complete("Answer: $\\boxed{C}$")


# ------------------------------------------------------------------------------------ hints
def test_boxed_removal_and_answer_matching() -> None:
    assert strip_boxed("a \\boxed{\\frac{1}{2}} b \\boxed {x^{2}}.") == "a  b ."
    assert strip_boxed("set \\boxed{\\{1, 2\\}} done") == "set  done"
    assert strip_boxed("cut \\boxed{1 + {2") == "cut "
    assert strip_boxed("no box, $x$ $y$") == "no box, $x$ $y$"
    assert (
        strip_boxed("so $\\boxed{5}$ and $$\\boxed{6}$$ and $x=\\boxed{7}$") == "so  and  and $x=$"
    )
    assert mentions("so x = 5.", "$5$")
    assert mentions("$\\dfrac{1}{ 2}$", "\\frac{1}{2}")
    assert mentions("value $2\\sqrt{3}+1$", "$2\\sqrt{3} + 1$")
    assert not mentions("we have 15 and 0.5 and 5.5", "5")
    assert not mentions("anything", "$ $")


def test_hint_shows_safe_solution_lines(math_data: TaskData) -> None:
    task = MathMCQATask(path="unused")
    halves, five, root, points, _, hexagon = math_data.train
    hint = task.oracle_hint(halves, "Answer: A")
    assert "Both 2 and 4 are divisible by 2." in hint and "Dividing" not in hint
    assert "So the fraction is ." in hint and "Do not answer A again" in hint
    hint = task.oracle_hint(five, "Answer: D")
    assert "We have $3x = 15$." in hint and "Divide both sides" not in hint
    hint = task.oracle_hint(root, "Answer: A")
    assert "reference solution" not in hint
    assert 'the correct option starts with "$2\\sqrt{3} +"' in hint
    hint = task.oracle_hint(points, "Answer: A")
    assert "Point C" not in hint and "The lengths add up." in hint
    lines = task.solution_lines(hexagon)
    assert lines == ["A hexagon is a polygon.", "It has as many sides as vertices."]


def test_hint_never_leaks_on_any_row(math_data: TaskData) -> None:
    for style in ("partial", "paper"):
        task = MathMCQATask(path="unused", hint_style=style)
        for example in math_data.train + math_data.eval:
            gold_text = example.options[example.gold_index]
            for previous in [*(f"Answer: {x}" for x in "ABCD" if x != example.gold), "?"]:
                hint = task.oracle_hint(example, previous)
                assert not _states_letter(hint, example.gold), (style, example.uid, hint)
                assert hint.startswith("Your answer is not correct.")
                assert '"Answer: <letter>"' in hint
                if style == "partial":
                    assert not mentions(hint, gold_text), (example.uid, hint)
                    assert _norm(gold_text) not in _norm(hint), (example.uid, hint)


def test_paper_style_fallback_quotes_first_words(math_data: TaskData) -> None:
    task = MathMCQATask(path="unused", hint_style="paper")
    hint = task.oracle_hint(math_data.train[2], "Answer: A")
    assert 'starts with "$2\\sqrt{3} + 1$"' in hint


# --------------------------------------------------------------------------------- registry
@pytest.mark.parametrize(
    ("name", "words", "expected"),
    [("math_mcqa", 3, 10), ("stellaathena/math_mcqa", 3, 10), ("math_mcqa", 12, 12)],
)
def test_registry_hint_words_rule(name: str, words: int, expected: int, tmp_path: Path) -> None:
    cfg = load_config(
        None,
        [
            f"data.dataset={name}",
            f"data.path={tmp_path}",
            f"feedback.mc_hint_words={words}",
            "data.max_eval_examples=9",
        ],
    )
    task = build_task(cfg)
    assert isinstance(task, MathMCQATask)
    assert task.hint_words == expected and task.hint_style == "partial"
    assert (task.hub_id, task.split, task.eval_split, task.max_eval_examples) == (
        "stellaathena/math_mcqa",
        "train",
        "test",
        9,
    )
