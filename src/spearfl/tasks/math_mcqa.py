"""MATH-MCQA (``stellaathena/math_mcqa``): competition maths problems with four options.

Rows have ``problem``, ``choices`` (four option texts, often LaTeX), ``answer`` (the 0-based
index of the right option; a digit string is accepted too), ``solution`` (the MATH worked
solution, final result in ``\\boxed{...}``) and optionally ``answer_text``, ``level``, ``type``.
The gold answer and partition label is the letter A-D. Rows carry no id, so the uid is
``<file name>:<row>``.

The model reasons step by step and ends with ``Answer: X``; evaluation is generative (greedy)
with the last declared letter (:class:`LetterChoiceTask` extraction). Only an ``Answer: X``
line counts as well formatted, not a bare letter.

Oracle hint (SPEC §5): "wrong" + up to three lines of the gold solution + a format reminder.
Every ``\\boxed{...}`` (nested braces included) is removed first; then lines are dropped that
mention the gold option text or ``answer_text`` (compared ignoring ``$`` and spacing, and as a
whole token, so a gold "5" drops "x = 5." but not "15") or contain the gold letter standing
alone; the first three lines left are shown (filtering first, so a dropped line lets a later
one in). With none left, the
hint quotes the opening of the correct option instead, kept partial as for the other
multiple-choice tasks (with ``hint_style="paper"``: its first ``hint_words`` words). The hint
never contains the gold letter nor, in the default style, the gold option text.

Splits: train / test on the Hub (eval split default ``test``); there is no offline copy.
"""

from __future__ import annotations

import re
from pathlib import Path

from spearfl.tasks.base import LETTERS, Example
from spearfl.tasks.dataset import DatasetTask
from spearfl.tasks.multiple_choice import LetterChoiceTask, standalone_letter
from spearfl.tasks.plain_prompts import open_section
from spearfl.tasks.rows import RowFields, RowSource

NUM_CHOICES = 4
MAX_SOLUTION_LINES = 3
DEFAULT_HINT_WORDS = 10
"""The paper's fallback length for this task (SPEC §5), longer than ARC's 3."""

_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_GAP = "\0"  # marks where a box was, so math delimiters left empty can go too
_EMPTY_MATH = re.compile(r"\$+\s*\0\s*\$+|\\\(\s*\0\s*\\\)|\\\[\s*\0\s*\\\]")
_LATEX_ALIASES = ((r"\dfrac", r"\frac"), (r"\tfrac", r"\frac"), (r"\left", ""), (r"\right", ""))


def strip_boxed(text: str) -> str:
    """``text`` with every ``\\boxed{...}`` removed, braces matched (``\\{`` is not a brace),
    together with math delimiters that held nothing else (``$\\boxed{5}$`` leaves nothing)."""
    pieces = []
    position = 0
    while match := _BOXED.search(text, position):
        pieces.append(text[position : match.start()] + _GAP)
        depth, index = 1, match.end()
        while index < len(text) and depth:
            char = text[index]
            if char == "\\":
                index += 2
                continue
            depth += {"{": 1, "}": -1}.get(char, 0)
            index += 1
        position = index
    pieces.append(text[position:])
    return _EMPTY_MATH.sub("", "".join(pieces)).replace(_GAP, "")


def _canonical(text: str) -> str:
    for alias, canonical in _LATEX_ALIASES:
        text = text.replace(alias, canonical)
    return text.replace("$", "")


def mentions(text: str, answer: str) -> bool:
    """Whether ``text`` contains ``answer`` as a whole token, ignoring ``$``, spacing and LaTeX
    spelling variants (``\\dfrac``/``\\frac``, ``\\left``/``\\right``)."""
    core = "".join(_canonical(answer).split())
    if not core:
        return False
    body = r"\s*".join(re.escape(char) for char in core)
    head = r"(?<![A-Za-z0-9.])" if core[0].isalnum() else ""
    tail = r"(?![A-Za-z0-9])(?!\.\d)" if core[-1].isalnum() else ""
    return re.search(head + body + tail, _canonical(text)) is not None


class MathMCQATask(DatasetTask, LetterChoiceTask):
    """MATH-MCQA as a generative letter-answer task (see the module docstring)."""

    name = "math_mcqa"
    hub_id = "stellaathena/math_mcqa"
    default_eval_split = "test"
    eval_method = "generative"
    answer_marker = "Answer:"
    bare_letter_ok = False
    plain_task_sentence = "Solve the problem and choose the correct option."
    question_section = "PROBLEM"
    plain_answer_start = open_section("SOLUTION")  # it reasons first: never end with "Answer:"

    def __init__(self, *, hint_words: int = DEFAULT_HINT_WORDS, **kwargs: object) -> None:
        super().__init__(hint_words=hint_words, **kwargs)

    # ----------------------------------------------------------------- data
    def parse_row(self, source: RowSource) -> Example:
        fields = RowFields(source)
        problem = fields.text("problem")
        choices = fields.texts("choices", NUM_CHOICES)
        if not all(choices):
            raise fields.error("every choice must have text")
        gold = LETTERS[fields.index("answer", NUM_CHOICES)]
        fields.require("solution")
        data = source.data
        if not isinstance(data["solution"], str):
            raise fields.error(
                f"'solution' must be a string, got {type(data['solution']).__name__}"
            )
        answer_text = data.get("answer_text")
        return Example(
            uid=f"{Path(source.file).name}:{source.row}",
            question=problem,
            options=tuple(choices),
            gold=gold,
            label=gold,
            meta={
                "source": source.file,
                "row": source.row,
                "solution": data["solution"],
                "answer_text": answer_text.strip() if isinstance(answer_text, str) else "",
                "level": data.get("level"),
                "type": data.get("type"),
            },
        )

    # -------------------------------------------------------------- prompts
    def answer_instruction(self, example: Example) -> str:
        listed = self.listed_letters(example)
        return (
            'Reason step by step, then end with a final line of the form "Answer: X", where X '
            f"is the letter of the correct option ({listed})."
        )

    def format_instruction(self, example: Example) -> str:
        return self.answer_instruction(example)

    # ------------------------------------------------------------- feedback
    def reveals(self, text: str, example: Example) -> bool:
        """Whether ``text`` gives the answer away: the gold option text or ``answer_text`` as
        a token, or the gold letter standing alone."""
        gold_texts = (example.options[example.gold_index], example.meta.get("answer_text", ""))
        if any(mentions(text, gold) for gold in gold_texts):
            return True
        return standalone_letter(example.gold).search(text) is not None

    def solution_lines(self, example: Example) -> list[str]:
        """Up to three lines of the gold solution that are safe to show (module docstring)."""
        kept: list[str] = []
        for raw in strip_boxed(example.meta.get("solution", "")).splitlines():
            line = " ".join(raw.split())
            if not any(char.isalnum() for char in line):
                continue
            if self.reveals(line, example):
                continue
            kept.append(line)
            if len(kept) == MAX_SOLUTION_LINES:
                break
        return kept

    def privileged_text(self, example: Example) -> str:
        """The answer, then the worked solution (OPSD's teacher context; the answer first
        survives a cut)."""
        solution = example.meta.get("solution", "").strip()
        answer = super().privileged_text(example)
        return f"{answer}\nSolution: {solution}" if solution else answer

    def oracle_hint(self, example: Example, completion: str) -> str:
        """Wrong + safe solution lines, else a partial option opening, + a format reminder.

        Candidates go from most to least informative; the first that does not
        :meth:`reveal <reveals>` the answer is returned (see :meth:`first_safe_hint`).
        """
        opening = "Your answer is not correct."
        repeat = self.repeat_sentence(example, completion)
        reminder = 'Reason step by step and end with a final line "Answer: <letter>".'
        candidates: list[tuple[str, bool]] = []  # (hint, quotes the option fragment)
        lines = self.solution_lines(example)
        if lines:
            shown = "\n".join(lines)
            candidates.append(
                (f"{opening} The reference solution begins:\n{shown}\n{repeat} {reminder}", False)
            )
        fragment = self.hint_fragment(example)
        if fragment:
            shown = f'Hint: the correct option starts with "{fragment}".'
            candidates.append((f"{opening} {shown} {repeat} {reminder}", True))
        candidates.append((f"{opening} {repeat} {reminder}", False))
        candidates.append((f"{opening} {reminder}", False))
        return self.first_safe_hint(example, candidates, self.reveals)
