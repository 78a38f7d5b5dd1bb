"""Shared behaviour of letter-answer multiple-choice tasks (ARC-Challenge, HellaSwag, MATH-MCQA).

Everything here is about one question with lettered options whose answer is a single letter:
the prompt, reading the declared letter out of a completion, and the oracle's partial hint.
Subclasses add data loading, a task-specific nudge sentence and, where needed, their own
answer instruction.

Answer extraction follows SPEC §5 ("last declared answer"):

1. the last ``Answer: X`` / ``answer is X`` declaration (marker case-insensitive, optional
   spaces, ``Answer:X``, ``(B)``, ``option B``, ``B.``, ``$B$``, ``\boxed{B}``; a lower-case
   letter counts only when it stands alone, e.g. ``answer: b`` or ``answer is (b)``), else
2. a completion that is nothing but a letter (``b``, ``(c)``, ``D.``), else
3. the last standalone capital letter among the valid ones.

Step 3 is ambiguous for the article "A" ("A plant needs light"), so a capital ``A`` followed by a
lower-case word is treated as an article unless that word reads like a statement about an option
("A is", "A and B"). Declared answers always win over this guess, which is why prompts ask for a
bare letter and revisions may use the ``Answer:`` marker.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Literal

from spearfl.tasks.base import LETTERS, Example, Message, Task, user_turn
from spearfl.tasks.plain_prompts import join_sections, option_lines, section

HintStyle = Literal["partial", "paper"]
HINT_STYLES: tuple[str, ...] = ("partial", "paper")

_MARKER = re.compile(
    r"\banswer\b\s*(?:is\b\s*:?|[:=])\s*[*_]*\s*(?:(?:option|choice)\s+)?"
    # Maths answers often come as "$B$", "\boxed{B}" or "$\text{(B)}$".
    r"(?:\$\s*)?(?:\\(?:boxed|text|textbf|mathrm)\s*\{\s*)?"
    r"(?P<open>[(\[])?\s*(?P<letter>[A-Za-z])\s*(?P<close>[)\]])?(?![A-Za-z0-9])",
    re.IGNORECASE,
)
_LONE_LOWER_FOLLOW = re.compile(r"\s*(?:$|[.,;:!?)\]*])")
_BARE = re.compile(r"\s*[*_]*\(?\s*(?P<letter>[A-Ha-h])\s*\)?[.:]?[*_]*\s*")
_CAPITAL = re.compile(r"(?<![A-Za-z0-9])(?P<letter>[A-H])(?![A-Za-z0-9])")
_NEXT_WORD = re.compile(r"\s+([a-z]+)")
# Words after a capital "A" that make it a reference to option A rather than an article.
_OPTION_A_FOLLOWERS = frozenset(
    {
        "is", "was", "seems", "looks", "would", "could", "should", "must", "might", "and",
        "or", "because", "since", "as", "fits", "matches", "describes", "best", "correct",
    }
)  # fmt: skip
_WELL_FORMED_BARE = re.compile(r"\(?(?P<letter>[A-H])\)?\.?")
_WELL_FORMED_LINE = re.compile(r"(?i:answer)\s*:\s*\(?(?P<letter>[A-H])\)?\.?")


def standalone_letter(letter: str) -> re.Pattern[str]:
    """Pattern for ``letter`` as its own token (not part of a word, number or formula)."""
    return re.compile(rf"(?<![A-Za-z0-9]){re.escape(letter)}(?![A-Za-z0-9])")


def normalise_text(text: str) -> str:
    """Lower-case and collapse whitespace: the form leak checks compare in."""
    return " ".join(text.lower().split())


def hint_leaks(hint: str, example: Example) -> bool:
    """Whether ``hint`` gives the answer away: the full correct option text (case- and
    whitespace-insensitive substring) or the gold letter as a standalone capital."""
    option = normalise_text(example.options[example.gold_index])
    if option and option in normalise_text(hint):
        return True
    return standalone_letter(example.gold).search(hint) is not None


class LetterChoiceTask(Task):
    """A multiple-choice task answered with one letter (A, B, ...).

    ``hint_style`` picks the oracle's option fragment: ``"partial"`` (default) never reveals the
    whole correct option; ``"paper"`` is the paper's rule, the first ``hint_words`` words, which
    hands over short options entirely and is kept only to reproduce the paper.
    """

    name = "multiple_choice"
    eval_method = "letter_loglik"
    # Completions may end with "Answer: X"; those marker tokens appear in wins and losses alike,
    # so unlikelihood must leave them alone.
    answer_marker = "Answer:"
    hint_nudge: str = "Think again about what the question is really asking."
    """Task-specific sentence added to every hint (e.g. ARC: the underlying principle)."""
    bare_letter_ok: bool = True
    """Whether a completion that is just a letter counts as well formatted (tasks that ask for
    reasoning and an ``Answer: X`` line set this to False)."""
    plain_task_sentence: str = "Choose the best option to answer the question."
    """What the base-model prompt's instruction line asks, before the answer format."""
    question_section: str = "QUESTION"
    """Title of the base-model prompt's section that holds ``example.question``."""
    plain_answer_start: str = "Answer:"
    """Where a base-model prompt ends and the answer begins (the model continues it)."""

    def __init__(self, hint_style: str = "partial", hint_words: int = 3) -> None:
        if hint_style not in HINT_STYLES:
            raise ValueError(f"hint_style must be one of {HINT_STYLES}, got {hint_style!r}")
        if isinstance(hint_words, bool) or not isinstance(hint_words, int) or hint_words < 1:
            raise ValueError(f"hint_words must be a positive integer, got {hint_words!r}")
        self.hint_style = hint_style
        self.hint_words = hint_words

    # -------------------------------------------------------------- prompts
    @staticmethod
    def letters(example: Example) -> tuple[str, ...]:
        """The valid answer letters for ``example`` (one per option)."""
        return LETTERS[: len(example.options)]

    @classmethod
    def listed_letters(cls, example: Example) -> str:
        """The valid letters as prose: ``"A, B, C or D"``."""
        letters = cls.letters(example)
        return ", ".join(letters[:-1]) + f" or {letters[-1]}" if len(letters) > 1 else letters[0]

    def answer_instruction(self, example: Example) -> str:
        """The closing line of the chat prompt: how to answer."""
        listed = self.listed_letters(example)
        return f"Answer with the letter of the correct option ({listed}) only."

    def prompt_text(self, example: Example) -> str:
        """Question, one ``X. text`` line per option, then the answer-format instruction."""
        return (
            f"{example.question.strip()}\n\n"
            + option_lines(self.letters(example), example.options)
            + f"\n\n{self.answer_instruction(example)}"
        )

    def format_instruction(self, example: Example) -> str:
        return f"Respond with only the letter ({self.listed_letters(example)})."

    def plain_prompt(self, example: Example) -> str:
        """The base-model layout (SPEC §8): instruction line, question, options, answer slot."""
        return join_sections(
            f"{self.plain_task_sentence} {self.format_instruction(example)}",
            section(self.question_section, example.question),
            section("OPTIONS", option_lines(self.letters(example), example.options)),
            self.plain_answer_start,
        )

    def messages(self, example: Example) -> list[Message]:
        return [user_turn(self.prompt_text(example), self.plain_prompt(example))]

    # -------------------------------------------------------------- answers
    @staticmethod
    def _declarations(completion: str, valid: tuple[str, ...]) -> list[re.Match[str]]:
        """``Answer: X`` / ``answer is X`` matches whose letter is valid and really meant."""
        found = []
        for match in _MARKER.finditer(completion):
            letter = match.group("letter")
            if letter.upper() not in valid:
                continue
            bracketed = bool(match.group("open") and match.group("close"))
            if letter.islower() and not (
                bracketed or _LONE_LOWER_FOLLOW.match(completion, match.end("letter"))
            ):
                continue
            found.append(match)
        return found

    def _locate(self, example: Example, completion: str) -> tuple[str, int] | None:
        """The declared letter and its character offset in ``completion``."""
        valid = self.letters(example)
        declared = self._declarations(completion, valid)
        if declared:
            return declared[-1].group("letter").upper(), declared[-1].start("letter")
        bare = _BARE.fullmatch(completion)
        if bare and bare.group("letter").upper() in valid:
            return bare.group("letter").upper(), bare.start("letter")
        for match in reversed(list(_CAPITAL.finditer(completion))):
            letter = match.group("letter")
            if letter not in valid:
                continue
            if letter == "A" and self._looks_like_article(completion, match.end()):
                continue
            return letter, match.start()
        return None

    @staticmethod
    def _looks_like_article(text: str, end: int) -> bool:
        following = _NEXT_WORD.match(text, end)
        return bool(following) and following.group(1) not in _OPTION_A_FOLLOWERS

    def answer_complete(self, text: str) -> bool:
        """A letter declaration that cannot grow any more: a capital followed by anything (so
        "Answer: B" is not the start of "Be..."), a lower-case letter followed by punctuation
        (so "the answer is a " may still go on as an article)."""
        for match in self._declarations(text, LETTERS):
            rest = text[match.end("letter") :]
            if match.group("letter").isupper() and rest:
                return True
            if rest.strip() and not rest.lstrip()[0].isalpha():
                return True
        return False

    def extract_answer(self, example: Example, completion: str) -> str | None:
        found = self._locate(example, completion)
        return found[0] if found else None

    def answer_span(self, example: Example, completion: str) -> tuple[int, int] | None:
        found = self._locate(example, completion)
        return (found[1], found[1] + 1) if found else None

    def is_well_formatted(self, example: Example, completion: str) -> bool:
        """An ``Answer: C`` line, or (when :attr:`bare_letter_ok`) a bare capital letter (``C``,
        ``C.``, ``(C)``)."""
        valid = self.letters(example)
        bare = _WELL_FORMED_BARE.fullmatch(completion.strip())
        if self.bare_letter_ok and bare and bare.group("letter") in valid:
            return True
        for line in completion.splitlines():
            declared = _WELL_FORMED_LINE.fullmatch(line.strip())
            if declared and declared.group("letter") in valid:
                return True
        return False

    # ------------------------------------------------------------- feedback
    def hint_fragment(self, example: Example) -> str:
        """The opening of the correct option that the hint may show ('' for none).

        Beyond the style's word/character rule, the fragment is made safe to quote: a leading
        article "A" is lower-cased and the fragment is cut before any standalone gold letter
        (e.g. "Vitamin C" when C is gold), so it never names the gold letter; fragments with no
        letter or digit carry no information and are dropped.
        """
        words = example.options[example.gold_index].split()
        if not words:
            return ""
        if self.hint_style == "paper":
            picked = words[: self.hint_words]
        elif len(words) >= 2:
            picked = words[: min(self.hint_words, len(words) - 1)]
        else:
            word = words[0]
            keep = max(1, math.ceil(len(word) / 2))
            if keep >= len(word):
                return ""
            picked = [word[:keep]]
        if picked[0] == "A" and len(words) > 1:
            picked = ["a", *picked[1:]]
        gold_token = standalone_letter(example.gold)
        for index, word in enumerate(picked):
            if gold_token.search(word):
                picked = picked[:index]
                break
        fragment = " ".join(picked).rstrip(",;:")
        if not any(ch.isalnum() for ch in fragment):
            return ""
        return fragment

    def repeat_sentence(self, example: Example, completion: str) -> str:
        """Asks not to give the previous (wrong) letter again, naming it when it is readable."""
        previous = self.extract_answer(example, completion)
        if previous and previous != example.gold:
            return f"Do not answer {previous} again; pick a different option."
        return "Do not repeat your previous answer; pick a different option."

    def oracle_hint(self, example: Example, completion: str) -> str:
        """SPEC §5 multiple-choice hint: wrong + partial option opening + nudge + don't repeat.

        Candidates go from most to least informative; the first that passes :func:`hint_leaks`
        is returned (with ``hint_style="paper"`` only the gold-letter part of the check applies,
        since that rule may quote the whole option by design). An option so short that it occurs
        inside ordinary words (a single letter such as "e") cannot be kept out of any sentence;
        then the last, shortest candidate is returned anyway.
        """
        repeat = self.repeat_sentence(example, completion)
        opening = "Your answer is not correct."
        fragment = self.hint_fragment(example)
        # (hint, quotes_fragment): the paper style may quote the whole option on purpose, so
        # for its fragment-bearing hint only the gold-letter half of the leak check applies.
        candidates: list[tuple[str, bool]] = []
        if fragment:
            shown = f'Hint: the correct option starts with "{fragment}".'
            candidates.append((f"{opening} {shown} {self.hint_nudge} {repeat}", True))
        candidates.append((f"{opening} {self.hint_nudge} {repeat}", False))
        candidates.append((f"{opening} {repeat}", False))
        candidates.append(("Wrong; try again.", False))
        return self.first_safe_hint(example, candidates, hint_leaks)

    def first_safe_hint(
        self,
        example: Example,
        candidates: list[tuple[str, bool]],
        leaks: Callable[[str, Example], bool],
    ) -> str:
        """The first ``(hint, quotes_fragment)`` candidate that does not leak, else the last.

        With ``hint_style="paper"`` a candidate quoting the option fragment is only checked for
        the gold letter, since the paper's rule may quote the whole option by design.
        """
        for hint, quotes_fragment in candidates:
            if quotes_fragment and self.hint_style == "paper":
                if not standalone_letter(example.gold).search(hint):
                    return hint
            elif not leaks(hint, example):
                return hint
        return candidates[-1][0]


__all__ = [
    "HINT_STYLES",
    "HintStyle",
    "LetterChoiceTask",
    "hint_leaks",
    "normalise_text",
    "standalone_letter",
]
