"""``data.dataset: qa``: a task from a data file and the ``qa`` section, no code.

Each correctness rule on real strings; malformed rows and leaking hints named by file and row
(or skipped and counted); a 2-round run through Flower's simulation engine on the tiny model;
``spearfl check`` on the same config.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from helpers import tiny_run_overrides
from spearfl.config import ConfigError, load_config
from spearfl.tasks.qa import QATask, normalise_answer, parse_number
from spearfl.tasks.registry import build_task
from spearfl.tasks.rows import DataError

CAPITALS = [
    ("France", "Paris"),
    ("Italy", "Rome"),
    ("Japan", "Tokyo"),
    ("Egypt", "Cairo"),
    ("Peru", "Lima"),
    ("Kenya", "Nairobi"),
    ("Chile", "Santiago"),
    ("Spain", "Madrid"),
    ("Cuba", "Havana"),
    ("Iran", "Tehran"),
]


def write_jsonl(path: Path, rows: list[dict | str]) -> Path:
    """One row per line; a str is written as it is (a blank or broken line)."""
    lines = [row if isinstance(row, str) else json.dumps(row) for row in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def capital_rows(n: int = 40) -> list[dict]:
    """Questions with a short answer and a hint field that does not give it away."""
    rows = []
    for i in range(n):
        country, city = CAPITALS[i % len(CAPITALS)]
        rows.append(
            {
                "id": f"q{i}",
                "q": f"What is the capital of {country}? (#{i})",
                "a": city,
                "why": f"It is the largest city of {country}.",
                "topic": "europe" if country in ("France", "Italy", "Spain") else "world",
            }
        )
    return rows


def task_for(path: Path, *qa: str, skip: bool = False) -> QATask:
    cfg = load_config(
        None,
        ["data.dataset=qa", f"data.path={path}", f"data.skip_bad_rows={str(skip).lower()}"]
        + [f"qa.{item}" for item in qa],
    )
    task = build_task(cfg)
    assert isinstance(task, QATask)
    return task


def one_example(tmp_path: Path, row: dict, *qa: str):
    """The task and the example of a file holding ``row`` twice (one trains, one evaluates)."""
    task = task_for(write_jsonl(tmp_path / "one.jsonl", [row, row]), *qa)
    data = task.load()
    return task, data.train[0]


# ------------------------------------------------------------------------ rules
def test_exact_rule_compares_after_normalisation(tmp_path):
    task, ex = one_example(
        tmp_path, {"question": "Tallest tower in Paris?", "answer": "The Eiffel Tower"}
    )
    assert ex.gold == "eiffel tower" == normalise_answer("  THE eiffel   tower. ")
    assert task.is_correct(ex, "Let me think.\nAnswer: the Eiffel tower!")
    assert task.is_correct(ex, "answer: **Eiffel Tower**")
    assert task.is_correct(ex, "Eiffel Tower")  # no marker: the last line
    assert not task.is_correct(ex, "Answer: Eiffel Tower\nAnswer: Louvre")  # the last declared
    assert not task.is_correct(ex, "Answer: Tower")
    assert task.extract_answer(ex, "Answer: Louvre.") == "louvre"
    completion = "Hmm.\nAnswer: The Eiffel Tower\n"
    start, end = task.answer_span(ex, completion)
    assert completion[start:end] == "The Eiffel Tower"
    assert task.is_well_formatted(ex, completion) and not task.is_well_formatted(ex, "Eiffel")
    assert task.answer_complete("Answer: The Eiffel Tower\n")
    assert not task.answer_complete("Answer: The Eiffel")  # may go on: answers are many words


@pytest.mark.parametrize(
    "options",
    [["Mars", "Venus", "Jupiter"], {"A": "Mars", "B": "Venus", "c": "Jupiter"}],
    ids=["list", "letter-keyed"],
)
@pytest.mark.parametrize("answer", ["C", "c", "Jupiter"])
def test_choice_rule_reads_the_declared_letter_or_option_text(tmp_path, options, answer):
    row = {"question": "Largest planet?", "choices": options, "answer": answer}
    task, ex = one_example(tmp_path, row, "rule=choice", "options=choices")
    assert ex.options == ("Mars", "Venus", "Jupiter") and ex.gold == "C" and ex.label == "C"
    assert "A. Mars\nB. Venus\nC. Jupiter" in task.messages(ex)[0]["content"]
    assert task.is_correct(ex, "Answer: C")
    assert task.is_correct(ex, "It is the gas giant.\nAnswer: (c)")
    assert task.is_correct(ex, "Answer: Jupiter")  # the option's text after the marker
    assert task.is_correct(ex, "The answer is C.")  # the benchmarks' letter rules, no marker
    assert not task.is_correct(ex, "Answer: A")
    assert task.extract_answer(ex, "Answer: B. Venus") == "B"
    assert task.answer_complete("Answer: C\n") and not task.answer_complete("Answer: C")


def test_number_rule_uses_the_tolerance(tmp_path):
    row = {"question": "Pi to two places?", "answer": 3.14}
    task, ex = one_example(tmp_path, row, "rule=number", "tolerance=0.01")
    assert task.is_correct(ex, "Roughly 22/7, so\nAnswer: 3.141")
    assert task.is_correct(ex, "Answer: 3.15 or so")  # 0.01 away: inside
    assert not task.is_correct(ex, "Answer: 3.2")
    assert task.is_correct(ex, "I get 2 first, then 3.14")  # no marker: the last number
    assert not task.is_correct(ex, "Answer: pi")
    assert task.extract_answer(ex, "Answer: 1,234") == "1234"
    assert parse_number("3/4") == 0.75 and parse_number("-2e3") == -2000.0
    assert parse_number("12 apples") is None
    exact, big = one_example(tmp_path, {"question": "How many?", "answer": "1,000"}, "rule=number")
    assert big.gold == "1000" and exact.is_correct(big, "Answer: 1000")
    assert not exact.is_correct(big, "Answer: 1000.01")  # default tolerance 1e-6


def test_regex_rule_matches_the_whole_declared_answer(tmp_path):
    row = {"question": "Who wrote Hamlet?", "answer": r"(william )?shakespeare"}
    task, ex = one_example(tmp_path, row, "rule=regex")
    assert task.is_correct(ex, "Answer: William Shakespeare")
    assert task.is_correct(ex, "Answer: Shakespeare.")
    assert not task.is_correct(ex, "Answer: Shakespeare's brother")  # in full, not a prefix
    assert not task.is_correct(ex, "Answer: Marlowe")


def test_prompt_template_and_instruction(tmp_path):
    row = {"question": "Largest planet?", "choices": ["Mars", "Jupiter"], "answer": "B"}
    task, ex = one_example(
        tmp_path,
        row,
        "rule=choice",
        "options=choices",
        "prompt=Q: {question}\nPick one:\n{options}",
        "marker=Final:",
    )
    [turn] = task.messages(ex)
    assert turn["content"] == (
        "Q: Largest planet?\nPick one:\nA. Mars\nB. Jupiter\n\n"
        'End with a final line "Final: X", where X is the letter of the correct option (A or B).'
    )
    assert turn["plain"].startswith("Answer the question. End with")
    assert turn["plain"].endswith("[RESPONSE]\n")
    assert task.answer_marker == "Final:" and task.is_correct(ex, "Final: B")


# ------------------------------------------------------------------------ hints
def test_hints_from_a_field_or_the_answer_never_contain_it(tmp_path):
    rows = capital_rows(4)
    task, ex = one_example(
        tmp_path, rows[0], "question=q", "answer=a", "hint=field", "hint_field=why"
    )
    hint = task.oracle_hint(ex, "Answer: Lyon")
    assert hint == (
        "Your answer is not correct. Hint: It is the largest city of France. "
        "Do not repeat your previous answer."
    )
    row = {"question": "Longest river?", "answer": "the river Nile"}
    task, ex = one_example(tmp_path, row, "hint=words", "hint_length=5")
    assert ex.meta["hint"] == "the river"  # always one word fewer than the answer
    assert task.oracle_hint(ex, "x") == (
        'Your answer is not correct. Hint: the answer starts with "the river". '
        "Do not repeat your previous answer."
    )
    task, ex = one_example(
        tmp_path, {"question": "Q?", "answer": 1234}, "rule=number", "hint=chars"
    )
    assert ex.meta["hint"] == "123" and not task.leaks(task.oracle_hint(ex, "1"), ex)
    # a one-word answer has no opening to show that is not the whole of it
    task, ex = one_example(tmp_path, {"question": "Q?", "answer": "Nile"}, "hint=words")
    assert ex.meta["hint"] == "" and "Hint" not in task.oracle_hint(ex, "x")


def test_a_hint_that_gives_the_answer_away_is_a_bad_row(tmp_path):
    rows = capital_rows(6)
    rows[2]["why"] = "Think of tokyo, the big one."
    path = write_jsonl(tmp_path / "leak.jsonl", rows)
    qa = ("question=q", "answer=a", "hint=field", "hint_field=why")
    with pytest.raises(DataError) as caught:
        task_for(path, *qa).load()
    message = str(caught.value)
    assert message.startswith(f"{path}, row 3: the hint (qa.hint_field 'why') gives the answer")
    assert "'Tokyo'" in message and "data.skip_bad_rows: true" in message
    task = task_for(path, *qa, skip=True)
    data = task.load()
    assert len(data.train) + len(data.eval) == 5 and task.bad_rows.count == 1
    assert all(ex.meta["row"] != 3 for ex in data.train + data.eval)


# -------------------------------------------------------------- malformed rows
def test_malformed_rows_name_file_row_and_field(tmp_path):
    rows: list[dict | str] = capital_rows(5)
    rows[1] = {"q": "No answer here?"}
    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(DataError, match=rf"^{path}, row 2: missing required field\(s\): a;"):
        task_for(path, "question=q", "answer=a").load()
    rows.insert(3, "")  # a blank line still counts, as an editor shows it
    rows[4] = '{"q": "broken'  # line 5
    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(DataError, match=rf"^{path}, row 5: invalid JSON at column 7"):
        task_for(path, "question=q", "answer=a").load()
    task = task_for(path, "question=q", "answer=a", skip=True)
    data = task.load()
    assert task.bad_rows.count == 2
    assert [ex.meta["row"] for ex in data.train + data.eval] == [1, 3, 6]
    assert "row 5: invalid JSON" in task.bad_rows.summary()
    assert "row 2: missing required field(s): a" in task.bad_rows.summary()

    cases = [
        ({"question": "Q?", "answer": "Z", "o": ["x", "y"]}, ("rule=choice", "options=o"),
         "'answer' must be a letter A-B or one option's text, got 'Z'"),
        ({"question": "Q?", "answer": "A", "o": {"A": "x", "C": "y"}}, ("rule=choice", "options=o"),
         "'o' must be keyed by the letters A, B, ... in a row, got A, C"),
        ({"question": "Q?", "answer": "A", "o": ["x"]}, ("rule=choice", "options=o"),
         "'o' must have 2-8 options, got 1"),
        ({"question": "Q?", "answer": "many"}, ("rule=number",),
         "'answer' must be a number (qa.rule number), got 'many'"),
        ({"question": "Q?", "answer": "(oops"}, ("rule=regex",),
         "'answer' is not a valid regular expression"),
        ({"question": "Q?", "answer": "?!"}, (), "'answer' is empty once normalised"),
        ({"question": "", "answer": "x"}, (), "'question' must be a non-empty string"),
        ({"question": "Q?", "answer": "x"}, ("hint=field", "hint_field=tip"),
         "missing required field(s): tip"),
    ]  # fmt: skip
    for row, qa, reason in cases:
        good = {"question": "ok?", "answer": "7", "o": ["7", "y"], "tip": "t"}
        path = write_jsonl(tmp_path / "case.jsonl", [good, row])
        with pytest.raises(DataError) as caught:
            task_for(path, *qa).load()
        assert str(caught.value).startswith(f"{path}, row 2: {reason}"), (qa, str(caught.value))


def test_qa_section_is_validated_by_key():
    cases = [
        (["qa.questoin=q"], "unknown key 'qa.questoin'", "did you mean 'qa.question'?"),
        (["qa.rule=choice"], "qa.rule 'choice' needs qa.options", "--set qa.rule=choice"),
        (["qa.rule=fuzzy"], "qa.rule must be one of exact, choice, number, regex", ""),
        (["qa.prompt=Q: {question} {answer}"], "qa.prompt names {answer}", ""),
        (["qa.prompt=Options: {options}"], "qa.prompt must contain {question}", ""),
        (["qa.options=o", "qa.prompt={question}"], "qa.prompt must contain {options}", ""),
        (["qa.hint=field"], "qa.hint 'field' needs qa.hint_field", ""),
        (["qa.hint_field=why"], "qa.hint_field = 'why' would have no effect", ""),
        (["qa.tolerance=0.5"], "qa.tolerance = 0.5 would have no effect", ""),
        (["qa.rule=regex", "qa.hint=words"], "qa.hint 'words' quotes the answer's opening", ""),
    ]
    for overrides, message, where in cases:
        with pytest.raises(ConfigError) as caught:
            load_config(None, overrides)
        assert message in str(caught.value) and where in str(caught.value), str(caught.value)
    with pytest.raises(ValueError, match="data.dataset 'qa' reads your own rows: set data.path"):
        build_task(load_config(None, ["data.dataset=qa"]))


def test_splits_a_folder_test_file_or_the_tail_of_one_file(tmp_path):
    rows = capital_rows(10)
    task = task_for(write_jsonl(tmp_path / "all.jsonl", rows), "question=q", "answer=a", "id=id")
    task.eval_fraction = 0.2
    data = task.load()
    assert [ex.uid for ex in data.eval] == ["q8", "q9"] and len(data.train) == 8
    assert task.eval_split_used() == "last 2 rows of train"
    folder = tmp_path / "split"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", rows[:7])
    write_jsonl(folder / "test.jsonl", rows[7:])
    task = task_for(folder, "question=q", "answer=a", "id=id", "label=topic")
    data = task.load()
    assert [ex.uid for ex in data.eval] == ["q7", "q8", "q9"] and task.eval_split_used() == "test"
    assert {ex.label for ex in data.train} == {"europe", "world"}


def test_parquet_rows(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "rows.parquet"
    pq.write_table(pa.Table.from_pylist(capital_rows(5)), path)
    data = task_for(path, "question=q", "answer=a").load()
    assert [ex.gold for ex in data.train + data.eval] == ["paris", "rome", "tokyo", "cairo", "lima"]


# ---------------------------------------------------------------- end to end
def qa_config(tiny_model_dir: Path, tmp_path: Path) -> dict:
    """A tiny SPEAR run on a JSONL written here, as the YAML a user would write."""
    path = write_jsonl(tmp_path / "capitals.jsonl", capital_rows(40))
    cfg = load_config(None, tiny_run_overrides(tiny_model_dir, tmp_path / "run"))
    data = cfg.to_dict()
    data["data"].update(dataset="qa", path=str(path), eval_fraction=0.2)
    data["qa"] = {"question": "q", "answer": "a", "hint": "field", "hint_field": "why", "id": "id"}
    return data


def test_spearfl_check_passes_on_a_qa_config(tiny_model_dir, tmp_path, capsys):
    from spearfl.cli.main import main

    path = tmp_path / "qa.yaml"
    path.write_text(yaml.safe_dump(qa_config(tiny_model_dir, tmp_path)), encoding="utf-8")
    assert main(["check", str(path)]) == 0
    out = capsys.readouterr().out
    assert "32 training examples, 8 for evaluation from last 8 rows of train" in out
    assert out.rstrip().endswith("ok: spearfl run would start with this configuration")


@pytest.mark.slow
def test_two_rounds_of_spear_on_a_qa_file_through_flower(tiny_model_dir, tmp_path):
    from spearfl.config import config_from_dict
    from spearfl.federation.simulation import simulate

    cfg = config_from_dict(qa_config(tiny_model_dir, tmp_path))
    summary = simulate(cfg, tmp_path / "run")
    history = [json.loads(line) for line in (tmp_path / "run" / "history.jsonl").open()]
    assert [entry["round"] for entry in history] == [0, 1, 2] and summary["rounds_completed"] == 2
    for entry in history:
        assert entry["eval"]["method"] == "generative" and entry["eval"]["n"] == 8
        assert len(entry["eval"]["correct"]) == 8
    for entry in history[1:]:
        assert len(entry["client_metrics"]) == 2
        for metrics in entry["client_metrics"].values():
            assert metrics["num_rollouts"] == 8 and metrics["tokens_generated"] > 0


def test_settings_the_task_does_not_read_get_a_note():
    from spearfl.tasks.registry import task_notes

    notes = task_notes(load_config(None, ["qa.rule=number"]))
    assert notes == ["the qa section has no effect on embedded (only data.dataset qa reads it)"]
    notes = task_notes(load_config(None, ["data.dataset=qa", "feedback.mc_hint_words=5"]))
    assert notes == [
        "feedback.mc_hint_words = 5 has no effect on qa (its hint follows its own rule)"
    ]
