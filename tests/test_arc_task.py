"""ARC-Challenge task: loading real rows with provenance, prompts, extraction, and the hint."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from helpers import row_with, write_jsonl
from spearfl.feedback.oracle import OracleFeedback
from spearfl.tasks.arc import ArcChallengeTask
from spearfl.tasks.base import LETTERS, Example, TaskData
from spearfl.tasks.dataset import split_off_eval
from spearfl.tasks.rows import (
    BadRowPolicy,
    DataError,
    SplitNotFoundError,
    find_split_files,
    read_hub_rows,
    read_local_rows,
)

GOOD_ROW = {
    "id": "q1",
    "question": "Which gas do plants take in for photosynthesis?",
    "choices": {"text": ["oxygen", "carbon dioxide", "nitrogen", "helium"], "label": list("ABCD")},
    "answerKey": "B",
}


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def _states_letter(text: str, letter: str) -> bool:
    return re.search(rf"(?<![A-Za-z0-9]){letter}(?![A-Za-z0-9])", text) is not None


def _row(**changes: object) -> dict[str, object]:
    return row_with(GOOD_ROW, **changes)


@pytest.fixture(scope="module")
def arc_dir(shared_data: Path) -> Path:
    folder = shared_data / "arc_challenge"
    if not folder.is_dir():
        pytest.skip(f"{folder} missing")
    return folder


@pytest.fixture(scope="module")
def arc_data(arc_dir: Path) -> TaskData:
    return ArcChallengeTask(path=str(arc_dir)).load()


@pytest.fixture(scope="module")
def all_examples(arc_data: TaskData) -> list[Example]:
    return arc_data.train + arc_data.eval


def _example(options: tuple[str, ...] = ("red", "blue", "green", "yellow"), gold: str = "C"):
    return Example(uid="x", question="Pick one.", options=options, gold=gold, label=gold)


# ------------------------------------------------------------------------- loading real rows
def test_row_counts_and_validation_fallback(arc_dir: Path, arc_data: TaskData) -> None:
    assert len(arc_data.train) == 1119
    assert len(arc_data.eval) == 299  # eval_split "test" is absent locally -> validation
    assert all(ex.meta["source"].endswith("validation.jsonl") for ex in arc_data.eval)
    first = arc_data.train[0]
    assert first.uid == "Mercury_SC_415702"
    assert first.meta == {"source": str(arc_dir / "train.jsonl"), "row": 1}
    assert first.gold == first.label == "A"
    assert first.options[0] == "dry palms"


def test_numeric_labels_map_to_letters(arc_dir: Path, arc_data: TaskData) -> None:
    lines = (arc_dir / "validation.jsonl").read_text(encoding="utf-8").splitlines()
    numeric = [
        (number, json.loads(line))
        for number, line in enumerate(lines, start=1)
        if json.loads(line)["choices"]["label"][0] == "1"
    ]
    assert numeric, "validation.jsonl should hold some numeric-label rows"
    by_uid = {ex.uid: ex for ex in arc_data.eval}
    for number, raw in numeric:
        example = by_uid[raw["id"]]
        assert example.meta["row"] == number
        assert example.gold == LETTERS[int(raw["answerKey"]) - 1]
        assert example.options == tuple(raw["choices"]["text"])
    assert all(ex.gold in LETTERS[: len(ex.options)] for ex in arc_data.eval + arc_data.train)


def test_every_prompt_lists_every_option(all_examples: list[Example]) -> None:
    task = ArcChallengeTask(path="unused")
    for example in all_examples:
        messages = task.messages(example)
        assert len(messages) == 1 and messages[0]["role"] == "user"
        prompt = messages[0]["content"]
        assert example.question in prompt
        for letter, text in zip(LETTERS[: len(example.options)], example.options, strict=True):
            assert f"\n{letter}. {text}\n" in prompt
        assert "letter of the correct option" in prompt
        plain = messages[0]["plain"]  # the base-model wording of the same question
        assert f"[QUESTION]\n{example.question}\n\n[OPTIONS]\n" in plain
        for letter, text in zip(LETTERS[: len(example.options)], example.options, strict=True):
            assert f"\n{letter}. {text}\n" in plain
        assert plain.endswith("\n\nAnswer:")
    assert task.eval_method == "letter_loglik"


# ------------------------------------------------------------------------------ extraction
@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        ("A", "A"),
        ("b", "B"),
        ("(D)", "D"),
        ("C.", "C"),
        ("The answer is C.", "C"),
        ("Answer: b", "B"),
        ("answer: b.", "B"),
        ("Answer:D", "D"),
        ("ANSWER :  a", "A"),
        ("the answer is (b)", "B"),
        ("The correct answer is option D because plants need light.", "D"),
        ("I considered A and B. Answer: C", "C"),
        ("Answer: B. Because option A is wrong", "B"),
        ("Answer: A\nOn reflection, the answer is D.", "D"),
        ("B. It is the only option that fits.", "B"),
        ("D\n\nExplanation: sunlight drives photosynthesis.", "D"),
        ("Option C is right. A plant needs light.", "C"),  # article "A" is not an answer
        ("A is right.", "A"),
        ("The answer is a bit unclear, but C.", "C"),
        ("Answer: E", None),  # not one of the four options
        ("no idea", None),
        ("", None),
    ],
)
def test_extract_answer(completion: str, expected: str | None) -> None:
    task = ArcChallengeTask(path="unused")
    example = _example()
    assert task.extract_answer(example, completion) == expected
    span = task.answer_span(example, completion)
    if expected is None:
        assert span is None
    else:
        assert span is not None and completion[span[0] : span[1]].upper() == expected


def test_is_correct_and_oracle() -> None:
    task = ArcChallengeTask(path="unused")
    example = _example()
    assert task.is_correct(example, "Answer: C")
    assert not task.is_correct(example, "B")
    oracle = OracleFeedback(task)
    assert oracle.feedback(example, "C").correct
    wrong = oracle.feedback(example, "B")
    assert not wrong.correct and wrong.hint and "Do not answer B again" in wrong.hint


@pytest.mark.parametrize(
    ("completion", "ok"),
    [
        ("C", True),
        (" C. ", True),
        ("(C)", True),
        ("Because of X.\nAnswer: C", True),
        ("answer: C", True),
        ("The answer is C.", False),
        ("c", False),
        ("E", False),
        ("no idea", False),
    ],
)
def test_is_well_formatted(completion: str, ok: bool) -> None:
    assert ArcChallengeTask(path="unused").is_well_formatted(_example(), completion) is ok


# ------------------------------------------------------------------------------------ hints
def test_default_hint_never_leaks_on_any_row(all_examples: list[Example]) -> None:
    task = ArcChallengeTask(path="unused")
    with_fragment = 0
    for example in all_examples:
        wrong = next(letter for letter in LETTERS if letter != example.gold)
        hint = task.oracle_hint(example, wrong)
        gold_text = _norm(example.options[example.gold_index])
        assert gold_text not in _norm(hint), (example.uid, hint)
        assert not _states_letter(hint, example.gold), (example.uid, hint)
        assert f"Do not answer {wrong} again" in hint
        assert "scientific principle" in hint
        with_fragment += "starts with" in hint
    # The hint must stay useful: nearly every row gets an option fragment.
    assert with_fragment >= 0.95 * len(all_examples)


def test_partial_hint_edge_cases() -> None:
    task = ArcChallengeTask(path="unused")
    cases = [
        (("A lung", "A kidney", "A heart", "A liver"), "A"),  # leading article, gold A
        (("vitamin C", "iron", "zinc", "salt"), "A"),
        (("iron", "zinc", "salt", "Vitamin C"), "D"),  # "C" as word -> cut
        (("oil", "sand", "water", "ice"), "D"),  # one-word option
        (("6", "9", "3", "2"), "B"),  # one character: no fragment at all
        (("x", "", "y", "z"), "B"),  # empty option
        (("x", "...", "y", "z"), "B"),  # punctuation only
        (("Al", "Fe", "Cu", "Zn"), "A"),  # char prefix "A" would name the gold letter
    ]
    for options, gold in cases:
        example = _example(options, gold)
        wrong = "C" if gold != "C" else "A"
        hint = task.oracle_hint(example, f"Answer: {wrong}")
        assert not _states_letter(hint, gold), hint
        gold_text = _norm(options[LETTERS.index(gold)])
        if gold_text:
            assert gold_text not in _norm(hint), hint
        assert f"Do not answer {wrong} again" in hint
    assert 'starts with "a"' in task.oracle_hint(_example(cases[0][0], "A"), "B")
    assert 'starts with "ic"' in task.oracle_hint(_example(cases[3][0], "D"), "A")
    # An unreadable previous answer: no letter named at all.
    hint = task.oracle_hint(_example(), "no idea")
    assert "Do not repeat your previous answer" in hint and not _states_letter(hint, "C")


def test_paper_style_is_first_three_words(all_examples: list[Example]) -> None:
    task = ArcChallengeTask(path="unused", hint_style="paper")
    whole_option_revealed = 0
    for example in all_examples:
        gold_text = example.options[example.gold_index]
        words = gold_text.split()
        if any(_states_letter(word, example.gold) for word in words[:3]):
            continue  # such fragments are shortened so the hint never names the gold letter
        wrong = next(letter for letter in LETTERS if letter != example.gold)
        hint = task.oracle_hint(example, wrong)
        expected = " ".join(words[:3]).rstrip(",;:")
        assert f'starts with "{expected}"'.lower() in hint.lower(), (example.uid, hint)
        whole_option_revealed += _norm(gold_text) in _norm(hint)
    # Why the partial style is the default: the paper's rule gives many options away.
    assert whole_option_revealed > 100


def test_partial_hint_word_rule() -> None:
    task = ArcChallengeTask(path="unused", hint_words=3)
    options = ("dry palms", "a b c d e", "one two three", "photosynthesis")
    assert task.hint_fragment(_example(options, "A")) == "dry"
    assert task.hint_fragment(_example(options, "B")) == "a b c"
    assert task.hint_fragment(_example(options, "C")) == "one two"
    assert task.hint_fragment(_example(options, "D")) == "photosy"
    with pytest.raises(ValueError, match="hint_style"):
        ArcChallengeTask(path="unused", hint_style="full")
    with pytest.raises(ValueError, match="hint_words"):
        ArcChallengeTask(path="unused", hint_words=0)


# ---------------------------------------------------------------------------- malformed rows
@pytest.mark.parametrize(
    ("bad_line", "message"),
    [
        ({k: v for k, v in GOOD_ROW.items() if k != "answerKey"}, "missing required field"),
        (_row(answerKey="E"), "answerKey 'E' is not one of the labels"),
        (_row(choices={"text": [], "label": []}), "'choices' is empty"),
        (_row(choices={"text": ["a", "b"], "label": ["A"]}), "2 choice texts but 1 labels"),
        ("{not json", "invalid JSON"),
        ([1, 2], "expected a JSON object"),
    ],
)
def test_malformed_rows_name_file_and_row(tmp_path: Path, bad_line: object, message: str) -> None:
    folder = tmp_path / "arc"
    folder.mkdir()
    bad = bad_line if isinstance(bad_line, str) else json.dumps(bad_line)
    lines = [json.dumps(GOOD_ROW), json.dumps(_row(id="q2")), bad, json.dumps(_row(id="q4"))]
    (folder / "train.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    write_jsonl(folder / "validation.jsonl", [_row(id="v1")])

    with pytest.raises(DataError, match=message) as info:
        ArcChallengeTask(path=str(folder)).load()
    assert str(info.value).startswith(f"{folder / 'train.jsonl'}, row 3: ")
    assert info.value.row == 3 and info.value.file.endswith("train.jsonl")

    task = ArcChallengeTask(path=str(folder), skip_bad_rows=True)
    data = task.load()
    assert [ex.uid for ex in data.train] == ["q1", "q2", "q4"]
    assert task.bad_rows.count == 1
    assert "skipped 1 malformed row" in task.bad_rows.summary()
    assert "row 3" in task.bad_rows.messages[0]


def test_skip_counts_across_files_and_resets(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "train.jsonl", [GOOD_ROW, _row(answerKey="Z"), _row(id="q3")])
    write_jsonl(tmp_path / "validation.jsonl", [_row(id="v1"), _row(choices={})])
    task = ArcChallengeTask(path=str(tmp_path), skip_bad_rows=True)
    for _ in range(2):  # a second load starts counting afresh
        data = task.load()
        assert task.bad_rows.count == 2
        assert len(data.train) == 2 and len(data.eval) == 1


def test_bad_row_policy_keeps_first_messages() -> None:
    policy = BadRowPolicy(skip_bad_rows=True, keep_messages=2)
    for row in range(1, 6):
        policy.handle(DataError("f.jsonl", row, "broken"))
    assert policy.count == 5 and policy.messages == [
        "f.jsonl, row 1: broken",
        "f.jsonl, row 2: broken",
    ]
    with pytest.raises(DataError, match=r"f\.jsonl, row 9"):
        BadRowPolicy().handle(DataError("f.jsonl", 9, "broken"))


# --------------------------------------------------------------------- files, splits, Hub
def test_parquet_round_trip(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    rows = [_row(id=f"q{i}") for i in range(4)]
    rows[1] = _row(
        id="q1", choices={"text": ["w", "x", "y", "z"], "label": list("1234")}, answerKey="4"
    )
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "train-00000-of-00001.parquet")
    pq.write_table(pa.Table.from_pylist([_row(id="t0")]), tmp_path / "test-00000-of-00001.parquet")
    raw = read_local_rows(tmp_path, "train")
    assert [(Path(r.file).name, r.row) for r in raw][:2] == [
        ("train-00000-of-00001.parquet", 1),
        ("train-00000-of-00001.parquet", 2),
    ]
    data = ArcChallengeTask(path=str(tmp_path)).load()
    assert [ex.uid for ex in data.train] == ["q0", "q1", "q2", "q3"]
    assert data.train[1].gold == "D" and data.train[1].options == ("w", "x", "y", "z")
    assert [ex.uid for ex in data.eval] == ["t0"]
    assert data.eval[0].meta["source"].endswith("test-00000-of-00001.parquet")


def test_json_array_and_json_lines_files(tmp_path: Path) -> None:
    array = tmp_path / "rows.json"
    array.write_text(json.dumps([GOOD_ROW, _row(id="q2")]), encoding="utf-8")
    assert [(r.row, r.data["id"]) for r in read_local_rows(array, "ignored")] == [
        (1, "q1"),
        (2, "q2"),
    ]
    lines = write_jsonl(tmp_path / "lines.json", [GOOD_ROW, _row(id="q2")])
    assert [r.data["id"] for r in read_local_rows(lines, "train")] == ["q1", "q2"]


def test_split_file_selection(tmp_path: Path) -> None:
    for name in [
        "validation_part2.jsonl",
        "validation_part1.jsonl",
        "trainer_notes.json",
        "train.jsonl",
        "README.md",
    ]:
        (tmp_path / name).write_text(json.dumps(GOOD_ROW) + "\n", encoding="utf-8")
    assert [p.name for p in find_split_files(tmp_path, "validation")] == [
        "validation_part1.jsonl",
        "validation_part2.jsonl",
    ]
    assert [p.name for p in find_split_files(tmp_path, "train")] == ["train.jsonl"]
    with pytest.raises(SplitNotFoundError, match=r"README\.md"):
        read_local_rows(tmp_path, "test2")


def test_eval_fraction_split(tmp_path: Path) -> None:
    rows = [_row(id=f"q{i}") for i in range(100)]
    source = write_jsonl(tmp_path / "all.jsonl", rows)
    data = ArcChallengeTask(path=str(source), eval_fraction=0.05).load()
    assert len(data.train) == 95 and len(data.eval) == 5
    assert [ex.uid for ex in data.eval] == [f"q{i}" for i in range(95, 100)]
    assert {ex.uid for ex in data.train}.isdisjoint(ex.uid for ex in data.eval)

    folder = tmp_path / "only_train"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", rows[:10])
    data = ArcChallengeTask(path=str(folder), eval_split="test", eval_fraction=0.02).load()
    assert len(data.train) == 9 and [ex.uid for ex in data.eval] == ["q9"]  # at least one row

    capped = ArcChallengeTask(
        path=str(source), eval_split=None, eval_fraction=0.2, max_eval_examples=3
    ).load()
    assert len(capped.train) == 80 and [ex.uid for ex in capped.eval] == ["q80", "q81", "q82"]
    with pytest.raises(ValueError, match="cannot hold out"):
        split_off_eval(capped.eval[:1], 0.5)


def test_max_eval_examples_on_real_rows(arc_dir: Path) -> None:
    data = ArcChallengeTask(path=str(arc_dir), max_eval_examples=10).load()
    assert len(data.eval) == 10 and data.eval[0].meta["row"] == 1


def test_hub_rows_provenance(monkeypatch: pytest.MonkeyPatch) -> None:
    datasets = pytest.importorskip("datasets")
    calls: list[tuple[object, ...]] = []

    def fake_load(hub_id: str, config: str | None, cache_dir: str | None = None, **kw: object):
        calls.append((hub_id, config, cache_dir))
        return {"train": [GOOD_ROW, _row(id="q2")], "test": [_row(id="t1")]}

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    rows = read_hub_rows("allenai/ai2_arc", "ARC-Challenge", "train", cache_dir="/tmp/c")
    assert [(r.file, r.row) for r in rows] == [
        ("allenai/ai2_arc[train]", 1),
        ("allenai/ai2_arc[train]", 2),
    ]
    assert calls[0] == ("allenai/ai2_arc", "ARC-Challenge", "/tmp/c")
    with pytest.raises(SplitNotFoundError, match="available: test, train"):
        read_hub_rows("allenai/ai2_arc", "ARC-Challenge", "validation")

    data = ArcChallengeTask().load()
    assert [ex.uid for ex in data.eval] == ["t1"]
    data = ArcChallengeTask(eval_split="validation").load()  # absent on the Hub -> train tail
    assert [ex.uid for ex in data.train] == ["q1"] and [ex.uid for ex in data.eval] == ["q2"]
