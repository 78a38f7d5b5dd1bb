"""HellaSwag (``Rowan/hellaswag``): pick the most natural of four endings for a short passage.

Rows have ``ind``, ``activity_label``, ``ctx`` (or ``ctx_a`` + ``ctx_b``), ``endings`` (four)
and ``label``, the 0-based index of the right ending as a string "0"-"3" (sometimes an int);
it becomes the letter A-D, which is both the gold answer and the partition label. The
WikiHow rows carry markup such as ``[title]`` and ``[step]``; it is removed from context and
endings the way the common lm-evaluation-harness preprocessing does. ``ind`` repeats across the
ActivityNet and WikiHow sources, so the uid is ``<source_id>:<ind>``.

Splits: train / validation on the Hub; the eval split defaults to ``validation`` (HellaSwag's
test labels are hidden). The shared offline copy holds ``validation_part1.jsonl`` only, so
there the train split is missing and, following :mod:`spearfl.tasks.dataset`, the validation
rows serve both: training on the head, eval on the last ``eval_fraction`` (then capped at
``max_eval_examples``), with a warning in the log.
"""

from __future__ import annotations

import re

from spearfl.tasks.base import LETTERS, Example
from spearfl.tasks.dataset import DatasetTask
from spearfl.tasks.multiple_choice import LetterChoiceTask
from spearfl.tasks.rows import RowFields, RowSource

NUM_ENDINGS = 4
_TAG = re.compile(r"\[[^\]]*\]")


def clean_text(text: str) -> str:
    """Drop WikiHow markup (``[title]`` becomes a sentence break) and collapse whitespace."""
    text = _TAG.sub("", text.strip().replace(" [title]", ". "))
    return " ".join(text.split())


class HellaSwagTask(DatasetTask, LetterChoiceTask):
    """HellaSwag as a letter-answer task (see the module docstring for splits and cleaning)."""

    name = "hellaswag"
    hub_id = "Rowan/hellaswag"
    default_eval_split = "validation"
    hint_nudge = "Think about which ending is the most natural continuation of the passage."
    plain_task_sentence = "Choose the ending that best continues the context."
    question_section = "CONTEXT"

    def answer_instruction(self, example: Example) -> str:
        listed = self.listed_letters(example)
        return (
            "Which ending continues the passage most naturally? "
            f"Answer with the letter of the correct option ({listed}) only."
        )

    def parse_row(self, source: RowSource) -> Example:
        fields = RowFields(source)
        data = source.data
        if isinstance(data.get("ctx"), str) and data["ctx"].strip():
            context = data["ctx"]
        elif isinstance(data.get("ctx_a"), str) and data["ctx_a"].strip():
            context = f"{data['ctx_a']} {data.get('ctx_b') or ''}"
        else:
            raise fields.error("needs a non-empty 'ctx' (or 'ctx_a' + 'ctx_b')")
        endings = [clean_text(ending) for ending in fields.texts("endings", NUM_ENDINGS)]
        if not all(endings):
            raise fields.error("every ending must have text")
        gold = LETTERS[fields.index("label", NUM_ENDINGS)]
        activity = data.get("activity_label")
        context = clean_text(context)
        if isinstance(activity, str) and activity.strip():
            question = f"{activity.strip()}: {context}"
        else:
            question = context
        ind = data.get("ind")
        if ind is None:
            uid = f"{source.file}:{source.row}"
        else:
            uid = f"{data['source_id']}:{ind}" if data.get("source_id") else str(ind)
        return Example(
            uid=uid,
            question=question,
            options=tuple(endings),
            gold=gold,
            label=gold,
            meta={"source": source.file, "row": source.row},
        )
