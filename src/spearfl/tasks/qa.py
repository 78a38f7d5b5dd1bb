"""``data.dataset: qa``: a task read from your own question/answer file, with no code.

The ``qa`` section of the config (:class:`spearfl.config.QAConfig`) says which field of a row is
the question, the answer, the options, the hint, the partition label and the id, how an answer
is judged and how the prompt reads. Rows come from ``data.path`` as for the benchmarks
(:mod:`spearfl.tasks.rows`: ``.jsonl`` / ``.json`` / ``.parquet``, a file or a folder of
per-split files) and the train/eval split follows the benchmarks' rules
(:mod:`spearfl.tasks.dataset`): a folder's ``test`` files (or ``data.eval_split``'s) are held
out; one file has its last ``data.eval_fraction`` of rows held out, in file order, so shuffle a
file sorted by topic or give a test file.

Correctness rules (``qa.rule``). The declared answer is the text after the last ``qa.marker``
on its line (marker matched ignoring case); without a marker, the completion's last non-empty
line (``choice``: the letter rules of :mod:`spearfl.tasks.multiple_choice`; ``number``: the
last number anywhere).

- ``exact``: equal after normalisation (:func:`normalise_answer`: case-folded, punctuation and
  the articles a/an/the removed, whitespace collapsed).
- ``choice``: the row's ``qa.options`` (a list of texts, or a ``{"A": text, ...}`` map) and an
  answer that is a letter or one option's text; the declared letter (or option text) must be it.
- ``number``: the declared number (``1,234``, ``-3.5``, ``2e3``, ``3/4``) within
  ``qa.tolerance`` of the answer (a JSON number, or a string holding one number).
- ``regex``: the answer field is a regular expression the declared answer must match in full,
  ignoring case.

Hints (``qa.hint``): ``none``; ``field`` (the row's ``qa.hint_field``, quoted as written);
``words`` / ``chars`` (the answer's first ``qa.hint_length`` words or characters, ``choice``:
of the correct option's text, always at least one fewer than it has). Every row's hint is checked
when the rows are read: one that gives the answer away (:meth:`QATask.leaks`) is a malformed row,
reported by file and row, or skipped and counted with ``data.skip_bad_rows``.

Partition label: ``qa.label``'s field when given; else the gold letter for ``choice`` and one
label for all rows otherwise (the Dirichlet draw then splits only the clients' sizes).
"""

from __future__ import annotations

import math
import re
import unicodedata
from pathlib import Path
from typing import Any

from spearfl.config import QAConfig
from spearfl.tasks.base import LETTERS, Example, Message, find_last, user_turn
from spearfl.tasks.dataset import DatasetTask
from spearfl.tasks.multiple_choice import LetterChoiceTask, hint_leaks, standalone_letter
from spearfl.tasks.plain_prompts import join_sections, open_section, option_lines, section
from spearfl.tasks.rows import RowFields, RowSource

ONE_LABEL = "all"
"""Partition label of every row when neither ``qa.label`` nor the ``choice`` rule gives one."""

_ARTICLES = re.compile(r"\b(?:a|an|the)\b")
_NUMBER = re.compile(
    r"(?<![\w.])[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:/\d+(?:\.\d+)?)?(?:[eE][-+]?\d+)?"
    r"(?![\w])|(?<![\w.])[-+]?\.\d+(?![\w])"
)
_DECORATION = "*_`\"' \t"
_LETTER_DECLARED = re.compile(r"\s*[*_]*\(?\s*(?P<letter>[A-Ha-h])\s*\)?(?![A-Za-z0-9])")


def normalise_answer(text: str) -> str:
    """The form the ``exact`` rule compares in: case-folded, punctuation and articles removed,
    whitespace collapsed ("The Eiffel-Tower." -> "eiffeltower")."""
    folded = unicodedata.normalize("NFKC", text).casefold()
    kept = "".join(ch for ch in folded if not unicodedata.category(ch).startswith("P"))
    return " ".join(_ARTICLES.sub(" ", kept).split())


def parse_number(text: str) -> float | None:
    """The value of one number as written (``1,234``, ``-3.5``, ``2e3``, ``3/4``); None if
    ``text`` is not one."""
    text = text.strip().replace(",", "")
    try:
        if "/" in text:
            top, bottom = text.split("/", 1)
            value = float(top) / float(bottom)
        else:
            value = float(text)
    except (ValueError, ZeroDivisionError):
        return None
    return value if math.isfinite(value) else None


def numbers_in(text: str) -> list[float]:
    """Every number written in ``text``, in order."""
    found = (parse_number(m.group()) for m in _NUMBER.finditer(text))
    return [value for value in found if value is not None]


def _canonical_number(value: float) -> str:
    return str(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)


class QATask(DatasetTask, LetterChoiceTask):
    """A generative task defined by the ``qa`` config section (see the module docstring).

    A :class:`LetterChoiceTask` for its letter-reading rules (``choice``); everything else it
    overrides.
    """

    name = "qa"
    default_eval_split = "test"
    eval_method = "generative"

    def __init__(self, *, spec: QAConfig, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if self.path is None:
            raise ValueError(
                "data.dataset 'qa' reads your own rows: set data.path to a .jsonl / .parquet "
                "file or a folder of train/test files"
            )
        self.spec = spec
        self.answer_marker = spec.marker
        self._marker = re.compile(re.escape(spec.marker), re.IGNORECASE)

    # ----------------------------------------------------------------- data
    def parse_row(self, source: RowSource) -> Example:
        spec, fields = self.spec, RowFields(source)
        question = fields.text(spec.question)
        options = self._options(fields) if spec.options else ()
        gold, answer_text = self._gold(fields, options)
        label = self._label(fields, gold)
        uid = f"{Path(source.file).name}:{source.row}"
        if spec.id is not None:
            fields.require(spec.id)
            uid = str(source.data[spec.id])
        example = Example(
            uid=uid,
            question=question,
            options=options,
            gold=gold,
            label=label,
            meta={"source": source.file, "row": source.row, "answer": answer_text},
        )
        fragment = self._hint_fragment(fields, example)
        if fragment and self.leaks(fragment, example):
            where = f"qa.hint_field {spec.hint_field!r}" if spec.hint == "field" else spec.hint
            raise fields.error(
                f"the hint ({where}) gives the answer away: {fragment!r} contains {answer_text!r}"
            )
        example.meta["hint"] = fragment
        return example

    def _options(self, fields: RowFields) -> tuple[str, ...]:
        key = self.spec.options or ""
        value = fields.data.get(key)
        if isinstance(value, dict):
            letters = sorted(str(k).strip().upper() for k in value)
            if letters != list(LETTERS[: len(letters)]):
                raise fields.error(
                    f"{key!r} must be keyed by the letters A, B, ... in a row, got "
                    f"{', '.join(map(str, value))}"
                )
            by_letter = {str(k).strip().upper(): v for k, v in value.items()}
            texts = [by_letter[letter] for letter in letters]
            if not all(isinstance(text, str) for text in texts):
                raise fields.error(f"{key!r} must map each letter to a text")
            texts = [text.strip() for text in texts]
        else:
            texts = fields.texts(key)
        if not 2 <= len(texts) <= len(LETTERS):
            raise fields.error(f"{key!r} must have 2-{len(LETTERS)} options, got {len(texts)}")
        if not all(texts):
            raise fields.error(f"every option in {key!r} must have text")
        return tuple(texts)

    def _gold(self, fields: RowFields, options: tuple[str, ...]) -> tuple[str, str]:
        """The gold answer in the form :meth:`extract_answer` returns, and as the row wrote it."""
        spec, key = self.spec, self.spec.answer
        fields.require(key)
        value = fields.data[key]
        if spec.rule == "number":
            number = None
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                number = float(value) if math.isfinite(value) else None
            elif isinstance(value, str):
                number = parse_number(value)
            if number is None:
                raise fields.error(f"{key!r} must be a number (qa.rule number), got {value!r}")
            return _canonical_number(number), str(value).strip()
        if not isinstance(value, str) or not value.strip():
            raise fields.error(f"{key!r} must be a non-empty string, got {value!r}")
        text = value.strip()
        if spec.rule == "choice":
            letters = LETTERS[: len(options)]
            if text.upper() in letters:
                return text.upper(), text.upper()
            matches = [
                i for i, o in enumerate(options) if normalise_answer(o) == normalise_answer(text)
            ]
            if len(matches) != 1:
                raise fields.error(
                    f"{key!r} must be a letter {letters[0]}-{letters[-1]} or one option's text, "
                    f"got {text!r}"
                )
            return letters[matches[0]], text
        if spec.rule == "regex":
            try:
                re.compile(text)
            except re.error as exc:
                raise fields.error(f"{key!r} is not a valid regular expression: {exc}") from None
            return text, text
        gold = normalise_answer(text)
        if not gold:
            raise fields.error(f"{key!r} is empty once normalised (only punctuation/articles)")
        return gold, text

    def _label(self, fields: RowFields, gold: str) -> str:
        if self.spec.label is not None:
            fields.require(self.spec.label)
            return str(fields.data[self.spec.label])
        return gold if self.spec.rule == "choice" else ONE_LABEL

    def _hint_fragment(self, fields: RowFields, example: Example) -> str:
        """The row's hint text ('' for none): a field as written, or the answer's opening."""
        spec = self.spec
        if spec.hint == "none":
            return ""
        if spec.hint == "field":
            return fields.text(spec.hint_field or "")
        source = example.meta["answer"]
        if spec.rule == "choice":
            source = example.options[example.gold_index]
        if spec.hint == "chars":
            return source[: min(spec.hint_length, len(source) - 1)].strip()
        words = source.split()
        picked = words[: min(spec.hint_length, len(words) - 1)]
        if spec.rule == "choice" and picked:
            if picked[0] == "A":  # the article, not option A
                picked[0] = "a"
            gold_token = standalone_letter(example.gold)
            for index, word in enumerate(picked):
                if gold_token.search(word):
                    picked = picked[:index]
                    break
        return " ".join(picked)

    # -------------------------------------------------------------- prompts
    def rendered_question(self, example: Example) -> str:
        """``qa.prompt`` filled in: the question and one ``A. text`` line per option."""
        options = option_lines(LETTERS[: len(example.options)], example.options)
        text = self.spec.prompt.format(question=example.question, options=options)
        return re.sub(r"\n{3,}", "\n\n", text).strip()

    def format_instruction(self, example: Example) -> str:
        if self.spec.instruction:
            return self.spec.instruction
        marker = self.spec.marker
        if self.spec.rule == "choice":
            listed = self.listed_letters(example)
            return (
                f'End with a final line "{marker} X", where X is the letter of the correct '
                f"option ({listed})."
            )
        what = "a number" if self.spec.rule == "number" else "your answer"
        return f'End with a final line "{marker} <{what}>".'

    def messages(self, example: Example) -> list[Message]:
        question = self.rendered_question(example)
        instruction = self.format_instruction(example)
        plain = join_sections(
            f"Answer the question. {instruction}",
            section("QUESTION", question),
            open_section("RESPONSE"),
        )
        return [user_turn(f"{question}\n\n{instruction}", plain)]

    # -------------------------------------------------------------- answers
    def _declared(self, completion: str) -> tuple[str, int] | None:
        """The declared answer text and its offset: after the last marker, on its line; else
        the last non-empty line."""
        marker = find_last(self._marker, completion)
        if marker is not None:
            start = marker.end()
            end = completion.find("\n", start)
            end = len(completion) if end < 0 else end
        else:
            lines = [m for m in re.finditer(r"[^\n]+", completion) if m.group().strip()]
            if not lines:
                return None
            start, end = lines[-1].span()
        raw = completion[start:end]
        text = raw.strip(_DECORATION).rstrip(".").strip(_DECORATION)
        if not text:
            return None
        return text, start + raw.index(text[0])

    def _find(self, example: Example, completion: str) -> tuple[str, int, int] | None:
        """(answer in the form of ``gold``, start, end) of the declared answer."""
        rule = self.spec.rule
        if rule == "choice":
            return self._locate_choice(example, completion)
        if rule == "number":
            segment = completion
            offset = 0
            if (marker := find_last(self._marker, completion)) is not None:
                offset = marker.end()
                end = completion.find("\n", offset)
                segment = completion[offset : len(completion) if end < 0 else end]
            matches = [m for m in _NUMBER.finditer(segment) if parse_number(m.group()) is not None]
            if not matches:
                return None
            found = matches[0] if offset else matches[-1]
            value = parse_number(found.group())
            assert value is not None
            return _canonical_number(value), offset + found.start(), offset + found.end()
        declared = self._declared(completion)
        if declared is None:
            return None
        text, start = declared
        answer = text if rule == "regex" else normalise_answer(text)
        return (answer, start, start + len(text)) if answer else None

    def _locate_choice(self, example: Example, completion: str) -> tuple[str, int, int] | None:
        valid = LETTERS[: len(example.options)]
        if (marker := find_last(self._marker, completion)) is not None:
            start = marker.end()
            end = completion.find("\n", start)
            segment = completion[start : len(completion) if end < 0 else end]
            letter = _LETTER_DECLARED.match(segment)
            if letter and letter.group("letter").upper() in valid:
                at = start + letter.start("letter")
                return letter.group("letter").upper(), at, at + 1
            said = normalise_answer(segment)
            for index, option in enumerate(example.options):
                if said and said == normalise_answer(option):
                    return valid[index], start, start + len(segment)
        found = self._locate(example, completion)  # the benchmarks' letter rules
        return (found[0], found[1], found[1] + 1) if found else None

    def extract_answer(self, example: Example, completion: str) -> str | None:
        found = self._find(example, completion)
        return found[0] if found else None

    def answer_span(self, example: Example, completion: str) -> tuple[int, int] | None:
        found = self._find(example, completion)
        return (found[1], found[2]) if found else None

    def is_correct(self, example: Example, completion: str) -> bool:
        answer = self.extract_answer(example, completion)
        if answer is None:
            return False
        if self.spec.rule == "number":
            return abs(float(answer) - float(example.gold)) <= self.spec.tolerance
        if self.spec.rule == "regex":
            return re.fullmatch(example.gold, answer, flags=re.IGNORECASE) is not None
        return answer == example.gold

    def is_well_formatted(self, example: Example, completion: str) -> bool:
        """Some line starts with the marker and the answer after it can be read."""
        for line in completion.splitlines():
            stripped = line.strip().lstrip("*_")
            if self._marker.match(stripped) and self.extract_answer(example, stripped):
                return True
        return False

    def answer_complete(self, text: str) -> bool:
        """Choice: a letter after the marker followed by one more character; otherwise the
        marker's line has text and has ended (answers may be several words)."""
        if self.spec.rule == "choice":
            pattern = rf"{re.escape(self.spec.marker)}\s*\(?[A-Ha-h][^A-Za-z0-9]"
        else:
            pattern = rf"{re.escape(self.spec.marker)}[ \t]*\S[^\n]*\n"
        return re.search(pattern, text, flags=re.IGNORECASE) is not None

    # ------------------------------------------------------------- feedback
    def leaks(self, hint: str, example: Example) -> bool:
        """Whether ``hint`` gives the answer away, by the task's rule: the normalised answer as
        whole words (``exact``), the correct option's text or its letter standing alone
        (``choice``), a number within tolerance (``number``), a match of the pattern
        (``regex``)."""
        rule = self.spec.rule
        if rule == "choice":
            return hint_leaks(hint, example)
        if rule == "number":
            gold = float(example.gold)
            return any(abs(x - gold) <= self.spec.tolerance for x in numbers_in(hint))
        if rule == "regex":
            return re.search(example.gold, hint, flags=re.IGNORECASE) is not None
        return (
            re.search(rf"(?<!\S){re.escape(example.gold)}(?!\S)", normalise_answer(hint))
            is not None
        )

    def oracle_hint(self, example: Example, completion: str) -> str:
        """Wrong + the row's hint + don't repeat; the first wording that does not leak."""
        opening = "Your answer is not correct."
        repeat = "Do not repeat your previous answer."
        fragment = example.meta.get("hint", "")
        candidates = []
        if fragment:
            if self.spec.hint == "field":
                shown = f"Hint: {fragment}"
            else:
                shown = f'Hint: the answer starts with "{fragment}".'
            candidates.append(f"{opening} {shown} {repeat}")
        candidates += [f"{opening} {repeat}", "Wrong; try again."]
        for hint in candidates:
            if not self.leaks(hint, example):
                return hint
        return candidates[-1]

    def privileged_text(self, example: Example) -> str:
        if self.spec.rule == "choice":
            return super().privileged_text(example)
        answer = example.meta.get("answer", example.gold)
        if self.spec.rule == "regex":
            return f"The correct answer matches the regular expression {answer}"
        return f"The correct answer is {answer}"


__all__ = ["ONE_LABEL", "QATask", "normalise_answer", "numbers_in", "parse_number"]
