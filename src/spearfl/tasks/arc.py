"""ARC-Challenge (``allenai/ai2_arc``, config ``ARC-Challenge``): grade-school science questions
with 3-5 lettered options.

Rows have ``id``, ``question``, ``choices{text, label}`` and ``answerKey``. A few rows use
numeric labels "1"-"4"; they are mapped to A-D in both ``choices.label`` and ``answerKey``, so
every example is answered with a letter.

Splits (see :mod:`spearfl.tasks.dataset`): train / test on the Hub. Locally, when
``eval_split`` is ``"test"`` and there are no test files but ``validation`` files exist,
validation is used instead (the shared offline copy ships train + validation only, and
validation is ARC's other held-out split).
"""

from __future__ import annotations

from typing import Any

from spearfl.tasks.base import LETTERS, Example
from spearfl.tasks.dataset import DatasetTask
from spearfl.tasks.multiple_choice import LetterChoiceTask
from spearfl.tasks.rows import RowFields, RowSource

_REQUIRED = ("id", "question", "choices", "answerKey")


def normalise_label(label: Any) -> str:
    """Map a choice label to a letter: "1"-"8" -> A-H, letters upper-cased; others unchanged."""
    text = str(label).strip()
    if text.isdigit() and 1 <= int(text) <= len(LETTERS):
        return LETTERS[int(text) - 1]
    return text.upper()


class ArcChallengeTask(DatasetTask, LetterChoiceTask):
    """ARC-Challenge as a letter-answer task (see the module docstring for split handling)."""

    name = "arc_challenge"
    hub_id = "allenai/ai2_arc"
    hub_config = "ARC-Challenge"
    default_eval_split = "test"
    hint_nudge = "Think about the underlying scientific principle."

    def local_eval_candidates(self, eval_split: str) -> list[str]:
        # The offline copy has no test split; ARC's validation split is the held-out stand-in.
        return ["test", "validation"] if eval_split == "test" else [eval_split]

    def parse_row(self, source: RowSource) -> Example:
        fields = RowFields(source)
        bad = fields.error
        data = source.data
        fields.require(*_REQUIRED)
        question = fields.text("question")
        choices = data["choices"]
        if not isinstance(choices, dict) or "text" not in choices or "label" not in choices:
            raise bad("'choices' must be an object with 'text' and 'label' lists")
        texts, labels = choices["text"], choices["label"]
        if not isinstance(texts, list) or not isinstance(labels, list):
            raise bad("'choices.text' and 'choices.label' must be lists")
        if not texts:
            raise bad("'choices' is empty")
        if len(texts) != len(labels):
            raise bad(f"{len(texts)} choice texts but {len(labels)} labels")
        if len(texts) > len(LETTERS):
            raise bad(f"{len(texts)} choices; at most {len(LETTERS)} are supported")
        if not all(isinstance(text, str) for text in texts):
            raise bad("every choice text must be a string")
        letters = [normalise_label(label) for label in labels]
        if len(set(letters)) != len(letters):
            raise bad(f"duplicate choice labels: {labels}")
        key = normalise_label(data["answerKey"])
        if key not in letters:
            shown = ", ".join(str(label) for label in labels)
            raise bad(f"answerKey {data['answerKey']!r} is not one of the labels ({shown})")
        # Options are presented positionally (A, B, ... in row order); for every real ARC row the
        # normalised labels already are exactly that sequence.
        gold = LETTERS[letters.index(key)]
        return Example(
            uid=str(data["id"]),
            question=question,
            options=tuple(text.strip() for text in texts),
            gold=gold,
            label=gold,
            meta={"source": source.file, "row": source.row},
        )
