"""ARC-Challenge (``allenai/ai2_arc``, config ``ARC-Challenge``): grade-school science questions
with 3-5 lettered options.

Rows have ``id``, ``question``, ``choices{text, label}`` and ``answerKey``. A few rows use
numeric labels "1"-"4"; they are mapped to A-D in both ``choices.label`` and ``answerKey``, so
every example is answered with a letter.

Eval split resolution (SPEC §5: "the named held-out split, else the last 2% of train"):

* Hub: ``eval_split`` if the dataset has it, else the last ``eval_fraction`` of train.
* Local folder: files named after ``eval_split``; when ``eval_split`` is ``"test"`` and there
  are no test files but ``validation`` files exist, validation is used instead (the shared
  offline copy ships train + validation only, and validation is ARC's other held-out split).
* Local single file: it has no splits, so eval is always the last ``eval_fraction`` of it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from spearfl.tasks.base import LETTERS, Example, TaskData
from spearfl.tasks.multiple_choice import LetterChoiceTask
from spearfl.tasks.rows import (
    BadRowPolicy,
    DataError,
    RowSource,
    SplitNotFoundError,
    find_split_files,
    read_hub_rows,
    read_local_rows,
)

logger = logging.getLogger(__name__)

_REQUIRED = ("id", "question", "choices", "answerKey")


def normalise_label(label: Any) -> str:
    """Map a choice label to a letter: "1"-"8" -> A-H, letters upper-cased; others unchanged."""
    text = str(label).strip()
    if text.isdigit() and 1 <= int(text) <= len(LETTERS):
        return LETTERS[int(text) - 1]
    return text.upper()


def split_off_eval(examples: list[Example], fraction: float) -> tuple[list[Example], list[Example]]:
    """Hold out the last ``fraction`` of ``examples`` (at least one row, rounded to nearest),
    leaving at least one for training."""
    if len(examples) < 2:
        raise ValueError(
            f"cannot hold out an eval slice from {len(examples)} example(s); "
            "provide an eval split or more data"
        )
    n_eval = min(len(examples) - 1, max(1, round(len(examples) * fraction)))
    return examples[:-n_eval], examples[-n_eval:]


class ArcChallengeTask(LetterChoiceTask):
    """ARC-Challenge as a letter-answer task (see the module docstring for split handling)."""

    name = "arc_challenge"
    hint_nudge = "Think about the underlying scientific principle."

    def __init__(
        self,
        *,
        path: str | None = None,
        hub_id: str = "allenai/ai2_arc",
        config_name: str | None = "ARC-Challenge",
        split: str = "train",
        eval_split: str | None = "test",
        eval_fraction: float = 0.02,
        max_eval_examples: int | None = None,
        hint_style: str = "partial",
        hint_words: int = 3,
        skip_bad_rows: bool = False,
        cache_dir: str | None = None,
    ) -> None:
        super().__init__(hint_style=hint_style, hint_words=hint_words)
        if not 0.0 < eval_fraction < 1.0:
            raise ValueError(f"eval_fraction must be in (0, 1), got {eval_fraction!r}")
        if max_eval_examples is not None and max_eval_examples < 1:
            raise ValueError(f"max_eval_examples must be >= 1 or None, got {max_eval_examples!r}")
        self.path = path
        self.hub_id = hub_id
        self.config_name = config_name
        self.split = split
        self.eval_split = eval_split
        self.eval_fraction = eval_fraction
        self.max_eval_examples = max_eval_examples
        self.skip_bad_rows = skip_bad_rows
        self.cache_dir = cache_dir
        self.bad_rows = BadRowPolicy(skip_bad_rows)
        """Skipped-row count and messages of the latest :meth:`load`."""
        self.resolved_eval_source: str = ""
        """Where the latest :meth:`load` took eval from (a split name or 'train tail')."""

    # ----------------------------------------------------------------- data
    def load(self) -> TaskData:
        self.bad_rows = BadRowPolicy(self.skip_bad_rows)
        train_rows = self._read(self.split)
        eval_rows = self._read_eval()
        train = self._examples(train_rows)
        if eval_rows is None:
            train, evaluation = split_off_eval(train, self.eval_fraction)
            self.resolved_eval_source = f"last {len(evaluation)} rows of {self.split}"
        else:
            evaluation = self._examples(eval_rows)
        if self.max_eval_examples is not None:
            evaluation = evaluation[: self.max_eval_examples]
        if self.bad_rows.count:
            logger.warning("%s: %s", self.name, self.bad_rows.summary())
        if not train or not evaluation:
            raise ValueError(
                f"{self.name}: no usable examples (train {len(train)}, eval {len(evaluation)})"
            )
        return TaskData(train=train, eval=evaluation)

    def _read(self, split: str) -> list[RowSource]:
        if self.path is not None:
            return read_local_rows(self.path, split, self.bad_rows)
        return read_hub_rows(self.hub_id, self.config_name, split, self.cache_dir)

    def _read_eval(self) -> list[RowSource] | None:
        """Rows of the held-out split, or None when train must be sliced instead."""
        if self.eval_split is None:
            return None
        if self.path is not None:
            folder = Path(self.path)
            if not folder.is_dir():
                return None
            for split in self._local_eval_candidates(self.eval_split):
                if find_split_files(folder, split):
                    self.resolved_eval_source = split
                    return read_local_rows(folder, split, self.bad_rows)
            return None
        try:
            rows = read_hub_rows(self.hub_id, self.config_name, self.eval_split, self.cache_dir)
        except SplitNotFoundError:
            return None
        self.resolved_eval_source = self.eval_split
        return rows

    @staticmethod
    def _local_eval_candidates(eval_split: str) -> list[str]:
        # The offline copy has no test split; ARC's validation split is the held-out stand-in.
        return ["test", "validation"] if eval_split == "test" else [eval_split]

    def _examples(self, rows: list[RowSource]) -> list[Example]:
        examples = []
        for source in rows:
            try:
                examples.append(self.parse_row(source))
            except DataError as error:
                self.bad_rows.handle(error)
        return examples

    def parse_row(self, source: RowSource) -> Example:
        """Validate one raw row and turn it into an :class:`Example` (or raise DataError)."""

        def bad(reason: str) -> DataError:
            return DataError(source.file, source.row, reason)

        data = source.data
        missing = [key for key in _REQUIRED if data.get(key) is None]
        if missing:
            raise bad(f"missing required field(s): {', '.join(missing)}")
        question = data["question"]
        if not isinstance(question, str) or not question.strip():
            raise bad("'question' must be a non-empty string")
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
            question=question.strip(),
            options=tuple(text.strip() for text in texts),
            gold=gold,
            label=gold,
            meta={"source": source.file, "row": source.row},
        )
